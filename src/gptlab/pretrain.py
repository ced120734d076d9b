"""Pretraining a GPT from scratch on a text corpus (next-token prediction).

Defaults follow the book's chapter 5 on the bundled short story: context 256, stride 256,
batch 2, 10 epochs, AdamW 4e-4 with weight decay 0.1, dropout 0.1; the model is the
`gpt-mini` preset so that the whole run takes a few minutes on a laptop CPU.

With `data_dir` (a folder made by `gptlab prepare-data`) training reads random windows from
memory-mapped shards instead (see gptlab.shards): the last `val_fraction` of the tokens
validates, and an "epoch" is as many windows as the training tokens hold side by side. Under
torchrun every process runs this function; rank 0 alone writes the run folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptlab import distributed
from gptlab.checkpoints import save_model
from gptlab.config import get_preset
from gptlab.data import ResumableBatches, pretraining_datasets, read_corpus, tokenize_corpus
from gptlab.errors import GptlabError
from gptlab.generation import Sampling, generate_text
from gptlab.io import atomic_write_json
from gptlab.model import GPT
from gptlab.runs import RunDir
from gptlab.shards import RandomWindows, ShardStream
from gptlab.training import BatchSource, TrainConfig, TrainResult, perplexity, pick_device, train

# Evaluation batches when reading shards (their validation part may be huge).
SHARD_EVAL_BATCHES = 20


@dataclass
class PretrainConfig:
    out: Path = Path("runs/pretrain")
    corpus: Path | None = None  # None: the bundled short story
    data_dir: Path | None = None  # prepared shards instead of a corpus
    preset: str = "gpt-mini"
    context: int | None = None  # None: the preset's context length
    stride: int | None = None  # None: equal to the context (no overlap)
    val_fraction: float = 0.1
    dropout: float = 0.1
    batch_size: int = 2
    epochs: int = 10
    max_steps: int | None = None  # overrides epochs
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0
    eval_interval: int = 10
    eval_batches: int | None = None  # None: all (SHARD_EVAL_BATCHES with data_dir)
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 40
    seed: int = 123
    device: str = "auto"
    precision: str = "auto"
    tf32: bool = True
    fused_adamw: bool = True
    pin_memory: bool = True
    compile: bool = False
    gradient_checkpointing: bool = False
    fsdp: bool = False


def pretrain(c: PretrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) a pretraining job in `c.out`; returns the final losses."""
    with distributed.session(pick_device(c.device)) as (d, device):
        return _pretrain(c, d, device, resume, stop_after)


def _datasets(
    c: PretrainConfig, context: int, device: torch.device
) -> tuple[BatchSource, BatchSource, dict[str, int]]:
    """Training and validation batches from shards (`data_dir`) or a corpus."""
    if c.data_dir is not None:
        if c.corpus is not None:
            raise GptlabError("pass either --corpus or --data-dir, not both")
        stream = ShardStream(c.data_dir)
        cut = int(len(stream) * (1 - c.val_fraction))
        pin = c.pin_memory and device.type == "cuda"
        train_w = RandomWindows(stream, 0, cut, context, c.batch_size, c.seed, pin)
        val_w = RandomWindows(stream, cut, len(stream), context, c.batch_size, c.seed, pin)
        summary = {"tokens": len(stream), "train_tokens": cut, "val_tokens": len(stream) - cut}
        return train_w, val_w, summary
    stride = c.stride or context
    ids = tokenize_corpus(read_corpus(c.corpus))
    source = str(c.corpus or "bundled corpus the-verdict.txt")
    train_ds, val_ds = pretraining_datasets(ids, context, stride, c.val_fraction, source)
    train_batches = ResumableBatches(
        train_ds,
        c.batch_size,
        shuffle=True,
        seed=c.seed,
        pin_memory=c.pin_memory and device.type == "cuda",
    )
    val_batches = ResumableBatches(val_ds, c.batch_size, shuffle=False, drop_last=False)
    summary = {"tokens": len(ids), "train_windows": len(train_ds), "val_windows": len(val_ds)}
    return train_batches, val_batches, summary


def _pretrain(
    c: PretrainConfig,
    d: distributed.Dist,
    device: torch.device,
    resume: bool,
    stop_after: int | None,
) -> TrainResult:
    base = get_preset(c.preset)
    context = c.context or base.context_length
    if not 1 < context <= 100_000:
        raise GptlabError(f"--context must be between 2 and 100000, got {context}")
    model_cfg = base.replace(context_length=context, drop_rate=c.dropout)
    distributed.check_global_batch(c.batch_size, d)
    train_batches, val_batches, data_summary = _datasets(c, context, device)
    steps_per_epoch = max(1, train_batches.per_epoch // c.grad_accum)
    max_steps = c.max_steps or c.epochs * steps_per_epoch
    tc = TrainConfig.from_job(
        c, max_steps, eval_batches=c.eval_batches or (SHARD_EVAL_BATCHES if c.data_dir else None)
    )
    run = RunDir(c.out)
    config = {
        "task": "pretrain",
        "pretrain": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
        "model": model_cfg.to_dict(),
        "train": asdict(tc),
        "data": {**data_summary, "steps_per_epoch": steps_per_epoch},
        "device": str(device),
        "processes": d.world,
    }
    if d.is_main:
        run.prepare(config, resume=resume)
    distributed.barrier()
    torch.manual_seed(c.seed)
    model = GPT(model_cfg)
    sampling = Sampling(max_new_tokens=c.sample_tokens, temperature=0.0)
    samples: list[str] = []

    def sample(step: int) -> None:
        # Every process generates: under FSDP a forward pass needs all of them.
        text = c.sample_prompt + generate_text(model, [c.sample_prompt], sampling)[0]
        samples.append(f"[step {step}] {text}")
        model.train()

    result = train(
        model,
        train_batches,
        val_batches,
        tc,
        run,
        device,
        resume=resume,
        meta={"task": "lm"},
        on_eval=sample,
        stop_after=stop_after,
    )
    weights = distributed.model_state(model) if result.step >= max_steps else None
    if not d.is_main:
        return result
    if samples:
        with open(run.path / "samples.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(samples) + "\n")
    run.plot(
        "loss.png",
        {"train": ("eval", "train_loss"), "validation": ("eval", "val_loss")},
        "cross-entropy loss",
        "pretraining loss",
    )
    if result.step >= max_steps:
        save_model(model, run.path / "model", {"task": "lm"}, weights)
        atomic_write_json(
            run.path / "results.json",
            {
                "task": "pretrain",
                "steps": result.step,
                "tokens_seen": result.tokens_seen,
                "train_loss": result.train_loss,
                "val_loss": result.val_loss,
                "val_ppl": perplexity(result.val_loss),
                "train_seconds": result.seconds,
            },
        )
    return result
