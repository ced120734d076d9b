"""Pretraining a decoder from scratch on a text corpus (next-token prediction): a GPT-2
preset, or a Llama-family one such as llama-micro / qwen3-micro (built by families.new_model;
the corpus is GPT-2's tokens either way, so the preset needs GPT-2's 50,257 ids).

Defaults follow the book's chapter 5 on the bundled short story: context 256, stride 256,
batch 2, 10 epochs, AdamW 4e-4 with weight decay 0.1, dropout 0.1; the model is the
`gpt-mini` preset so that the whole run takes a few minutes on a laptop CPU.

With `data_dir` (a folder made by `gptlab prepare-data`) training reads random windows from
memory-mapped shards instead (see gptlab.shards): the last `val_fraction` of the tokens
validates, and an "epoch" is as many windows as the training tokens hold side by side. Under
torchrun every process runs this function; rank 0 alone writes the run folder.

`pretrain_on_texts` pretrains on a list of texts (the classifier's --pretrain-on-texts, the
pipeline's from-scratch base): the one place that writes such a corpus and resumes its run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gptlab import distributed
from gptlab.checkpoints import save_model
from gptlab.config import get_preset
from gptlab.data import ResumableBatches, pretraining_datasets, read_corpus, tokenize_corpus
from gptlab.errors import GptlabError
from gptlab.families import config_to_dict, new_model
from gptlab.generation import generate_text
from gptlab.io import atomic_write_text, read_json_object
from gptlab.jobs.base import Session, TrainingJob
from gptlab.runs import MODEL, RESULTS, has_run, is_complete
from gptlab.settings import PretrainConfig, Sampling
from gptlab.shards import RandomWindows, ShardStream
from gptlab.training import BatchSource, Plan, TrainResult

GPT2_VOCAB = 50257  # the ids gptlab.tokenizer gives a corpus
# Evaluation batches when reading shards (their validation part may be huge).
SHARD_EVAL_BATCHES = 20


def pretrain(
    c: PretrainConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Run (or resume) a pretraining job in `c.out`; returns results.json ({} unless this
    process finished the run)."""
    return Pretraining(c).run(resume, stop_after)


def pretrain_on_texts(c: PretrainConfig, texts: Callable[[], Sequence[str]]) -> dict[str, Any]:
    """Pretrain in `c.out` on `texts()` joined by <|endoftext|> into OUT/corpus.txt, written
    (by rank 0) only when the run starts: an interrupted run resumes on its own corpus, a
    finished one is left as it is. Returns its results.json; under torchrun every process
    calls this."""
    corpus = c.out / "corpus.txt"
    if not is_complete(c.out):
        resume = has_run(c.out)
        if not resume and distributed.current().is_main:
            atomic_write_text(corpus, "<|endoftext|>".join(texts()))
        distributed.barrier()
        pretrain(c.replace(corpus=corpus), resume=resume)
        distributed.barrier()  # rank 0 writes the model folder after the others return
    return read_json_object(c.out / RESULTS)


class Pretraining(TrainingJob[PretrainConfig]):
    task = "pretrain"
    loss_title = "pretraining loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        preset = get_preset(c.preset)
        self.model_cfg = preset.replace(
            context_length=c.context or preset.context_length, drop_rate=c.dropout
        )
        if self.model_cfg.vocab_size < GPT2_VOCAB:  # the corpus is GPT-2's tokens
            raise GptlabError(
                f"preset {c.preset!r} has {self.model_cfg.vocab_size:,} token ids, fewer than "
                f"GPT-2's {GPT2_VOCAB:,} that pretraining tokenizes with; pick a preset with "
                "vocab_size 50257 (gpt-*, llama-micro, qwen3-micro)"
            )
        if c.data_dir is not None and c.train.eval_batches is None:
            self.c = c = c.replace(train=c.train.replace(eval_batches=SHARD_EVAL_BATCHES))
        self.batches = self._datasets(s.device)
        return {"model": config_to_dict(self.model_cfg), "data": self.data}

    def _datasets(self, device: torch.device) -> tuple[BatchSource, BatchSource]:
        """Training and validation batches from shards (`data_dir`) or a corpus."""
        c, context = self.c, self.model_cfg.context_length
        t = c.train
        pin = c.speed.pin_memory and device.type == "cuda"
        if c.data_dir is not None:
            stream = ShardStream(c.data_dir)
            cut = int(len(stream) * (1 - c.val_fraction))
            train_w = RandomWindows(stream, 0, cut, context, t.batch_size, t.seed, pin)
            val_w = RandomWindows(stream, cut, len(stream), context, t.batch_size, t.seed, pin)
            self.data = {
                "tokens": len(stream),
                "train_tokens": cut,
                "val_tokens": len(stream) - cut,
            }
        else:
            ids = tokenize_corpus(read_corpus(c.corpus))
            source = str(c.corpus or "bundled corpus the-verdict.txt")
            train_ds, val_ds = pretraining_datasets(
                ids, context, c.stride or context, c.val_fraction, source
            )
            train_w = ResumableBatches(
                train_ds, t.batch_size, shuffle=True, seed=t.seed, pin_memory=pin
            )
            val_w = ResumableBatches(val_ds, t.batch_size, shuffle=False, drop_last=False)
            self.data = {
                "tokens": len(ids),
                "train_windows": len(train_ds),
                "val_windows": len(val_ds),
            }
        self.steps_per_epoch = max(1, train_w.per_epoch // t.grad_accum)
        self.data["steps_per_epoch"] = self.steps_per_epoch
        return train_w, val_w

    def build(self, s: Session) -> Plan:
        t = self.c.train
        torch.manual_seed(t.seed)
        max_steps = t.max_steps or t.epochs * self.steps_per_epoch
        return Plan(new_model(self.model_cfg), *self.batches, max_steps, meta={"task": "lm"})

    def on_eval(self, s: Session, plan: Plan, step: int, metrics: dict[str, Any]) -> None:
        # Every process generates: under FSDP a forward pass needs all of them.
        c = self.c
        sampling = Sampling(max_new_tokens=c.sample_tokens)
        text = c.sample_prompt + generate_text(plan.model, [c.sample_prompt], sampling)[0]
        if s.d.is_main:
            s.run.add_sample(step, text)
        plan.model.train()

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        save_model(plan.model, s.run.path / MODEL, {"task": "lm"}, weights)
        return {"task": "pretrain", **result.lm_results()}
