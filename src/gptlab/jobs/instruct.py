"""Instruction fine-tuning on the job skeleton (gptlab.jobs.base): the data and prompt formats
of gptlab.instructions, trained by gptlab.training.train (AdamW, warm-up, clipping,
accumulation, checkpoints, resume) on all weights or on LoRA adapters. The final model is
saved merged, as a plain model folder with its tokenizer and prompt format ("template" in its
config.json); the test split is kept as RUN/test.json for gptlab.respond.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch

from gptlab import distributed
from gptlab.data import ResumableBatches
from gptlab.errors import GptlabError
from gptlab.hub import base_with_tokenizer
from gptlab.instructions import (
    BUNDLED_DATA,
    InstructionDataset,
    LengthGroupedBatches,
    collate,
    load_entries,
    padding_fraction,
    prompt_format,
    split_entries,
)
from gptlab.io import atomic_write_json
from gptlab.jobs.base import Session, TrainingJob, add_lora, save_final_model
from gptlab.respond import generate_responses
from gptlab.settings import InstructConfig, Sampling
from gptlab.training import Plan, TrainResult

log = logging.getLogger("gptlab")


def finetune_instruct(
    c: InstructConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Fine-tune `c.base` on instruction data in run folder `c.out`; returns results.json
    ({} unless this process finished the run; see gptlab.jobs.base). Also writes the test
    split as RUN/test.json and the merged model as RUN/model."""
    return InstructionTuning(c).run(resume, stop_after)


class InstructionTuning(TrainingJob[InstructConfig]):
    task = "instruct"
    loss_title = "instruction fine-tuning loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        self.split_data()
        with distributed.main_first():  # rank 0 downloads and converts a pretrained base
            self.model, self.tokenizer = base_with_tokenizer(
                c.base, c.preset, c.train.seed, str(s.device)
            )
        self.format = prompt_format(c.prompt_format, self.tokenizer)
        context = self.model.cfg.context_length
        self.max_length = c.max_length or context
        if not 2 <= self.max_length <= context:
            raise GptlabError(f"--max-length must be between 2 and the context {context}")
        self.batches(s)
        self.steps_per_epoch = max(1, self.train_batches.per_epoch // c.train.grad_accum)
        self.lora = add_lora(self.model, c)
        self.trainable = self.model.num_params(trainable_only=True)
        return {
            "model": self.model.cfg.to_dict(),
            "data": {
                "source": self.source,
                "train": len(self.train_entries),
                "val": len(self.val_entries),
                "test": len(self.test_entries),
                "steps_per_epoch": self.steps_per_epoch,
                "max_length": self.max_length,
                "padding_fraction": self.padding,
            },
        }

    def split_data(self) -> None:
        """The entries, split 85/5/10; too few for a training and a validation entry is one
        line."""
        c = self.c
        entries = load_entries(c.data)
        self.train_entries, self.val_entries, self.test_entries = split_entries(
            entries, c.train.seed
        )
        self.source = str(c.data or f"bundled {BUNDLED_DATA}")
        if not self.train_entries or not self.val_entries:  # no batch size would help
            raise GptlabError(
                f"{self.source}: too few entries ({len(entries)}): the 85/5/10 split leaves "
                f"{len(self.train_entries)} for training and {len(self.val_entries)} for "
                "validation (at least one each)"
            )

    def batches(self, s: Session) -> None:
        """Training batches (length-grouped or plain) and validation batches in the prompt
        format, and the padding each kind of training batch would hold."""
        c, t = self.c, self.c.train
        self.train_ds = InstructionDataset(self.train_entries, self.format)
        val_ds = InstructionDataset(self.val_entries, self.format)
        lengths = self.train_ds.lengths(self.max_length)
        collate_fn = partial(
            collate,
            max_length=self.max_length,
            mask_prompt=c.mask_prompt,
            end_id=self.format.end_id,
            pad_id=self.tokenizer.pad_id,
        )
        pin = s.device.type == "cuda" and c.speed.pin_memory
        plain = ResumableBatches(
            self.train_ds, t.batch_size, shuffle=True, seed=t.seed, collate_fn=collate_fn,
            pin_memory=pin,
        )  # fmt: skip
        grouped = LengthGroupedBatches(
            self.train_ds, lengths, t.batch_size, t.seed, collate_fn=collate_fn, pin_memory=pin
        )
        self.train_batches = grouped if c.group_by_length else plain
        self.val_batches = ResumableBatches(
            val_ds, t.batch_size, shuffle=False, drop_last=False, collate_fn=collate_fn
        )
        self.padding = {
            "plain": padding_fraction(plain.epoch_batches(0), lengths),
            "grouped": padding_fraction(grouped.epoch_batches(0), lengths),
        }

    def build(self, s: Session) -> Plan:
        if s.d.is_main:
            atomic_write_json(s.run.path / "test.json", self.test_entries)
        t = self.c.train
        max_steps = t.max_steps or t.epochs * self.steps_per_epoch
        meta = {"task": "lm", "template": self.format.name, "lora": self.lora}
        return Plan(
            self.model,
            self.train_batches,
            self.val_batches,
            max_steps,
            meta,
            tokenizer=self.tokenizer,
        )

    def on_eval(self, s: Session, plan: Plan, step: int, metrics: dict[str, Any]) -> None:
        entry = self.val_entries[0]
        sampling = Sampling(max_new_tokens=self.c.sample_tokens)
        answer = generate_responses(plan.model, [entry], sampling, self.format)[0]
        if s.d.is_main:
            s.run.add_sample(step, f"{entry['instruction']!r} -> {answer!r}")
        plan.model.train()

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        c, model = self.c, plan.model
        meta = {"task": "lm", "template": self.format.name}
        model_dir = save_final_model(s, plan, weights, meta, self.lora)
        return {
            "task": "instruct",
            "base": c.base,
            "model": str(model_dir),
            "test_data": str(s.run.path / "test.json"),
            **result.lm_results(),
            "tokens_per_s": result.tokens_seen / max(result.seconds, 1e-9),
            "examples": {
                "train": len(self.train_ds),
                "val": len(self.val_entries),
                "test": len(self.test_entries),
            },
            "padding_fraction": self.padding["grouped" if c.group_by_length else "plain"],
            "padding_fraction_plain": self.padding["plain"],
            "padding_fraction_grouped": self.padding["grouped"],
            "trainable_params": self.trainable,
            "total_params": model.num_params(),
            "lora": self.lora,
        }
