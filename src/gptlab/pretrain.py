"""Pretraining a GPT from scratch on a text corpus (next-token prediction).

Defaults follow the book's chapter 5 on the bundled short story: context 256, stride 256,
batch 2, 10 epochs, AdamW 4e-4 with weight decay 0.1, dropout 0.1; the model is the
`gpt-mini` preset so that the whole run takes a few minutes on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptlab.checkpoints import atomic_write_json, save_model
from gptlab.config import get_preset
from gptlab.data import ResumableBatches, pretraining_datasets, read_corpus, tokenize_corpus
from gptlab.errors import GptlabError
from gptlab.generation import Sampling, generate_text
from gptlab.model import GPT
from gptlab.runs import RunDir
from gptlab.training import TrainConfig, TrainResult, perplexity, pick_device, train


@dataclass
class PretrainConfig:
    out: Path = Path("runs/pretrain")
    corpus: Path | None = None  # None: the bundled short story
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
    eval_batches: int | None = None  # None: evaluate on every batch
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 40
    seed: int = 123
    device: str = "auto"
    precision: str = "auto"


def pretrain(c: PretrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) a pretraining job in `c.out`; returns the final losses."""
    device = pick_device(c.device)
    base = get_preset(c.preset)
    context = c.context or base.context_length
    if not 1 < context <= 100_000:
        raise GptlabError(f"--context must be between 2 and 100000, got {context}")
    model_cfg = base.replace(context_length=context, drop_rate=c.dropout)
    stride = c.stride or context
    ids = tokenize_corpus(read_corpus(c.corpus))
    source = str(c.corpus or "bundled corpus the-verdict.txt")
    train_ds, val_ds = pretraining_datasets(ids, context, stride, c.val_fraction, source)
    train_batches = ResumableBatches(
        train_ds, c.batch_size, shuffle=True, seed=c.seed, pin_memory=device.type == "cuda"
    )
    val_batches = ResumableBatches(val_ds, c.batch_size, shuffle=False, drop_last=False)
    steps_per_epoch = max(1, train_batches.per_epoch // c.grad_accum)
    max_steps = c.max_steps or c.epochs * steps_per_epoch
    tc = TrainConfig(
        max_steps=max_steps,
        lr=c.lr,
        weight_decay=c.weight_decay,
        warmup_steps=c.warmup_steps,
        grad_accum=c.grad_accum,
        grad_clip=c.grad_clip,
        eval_interval=min(c.eval_interval, max_steps),
        eval_batches=c.eval_batches,
        seed=c.seed,
        precision=c.precision,
    )
    run = RunDir(c.out)
    run.prepare(
        {
            "task": "pretrain",
            "pretrain": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
            "model": model_cfg.to_dict(),
            "train": asdict(tc),
            "data": {
                "tokens": len(ids),
                "train_windows": len(train_ds),
                "val_windows": len(val_ds),
                "steps_per_epoch": steps_per_epoch,
            },
            "device": str(device),
        },
        resume=resume,
    )
    torch.manual_seed(c.seed)
    model = GPT(model_cfg)
    sampling = Sampling(max_new_tokens=c.sample_tokens, temperature=0.0)
    samples: list[str] = []

    def sample(step: int) -> None:
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
        save_model(model, run.path / "model", {"task": "lm"})
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
