"""Preference tuning (DPO) on the job skeleton (gptlab.jobs.base): an instruction-tuned model
learns to prefer the chosen response of each pair over the rejected one (gptlab.preferences),
trained by gptlab.training.train on all weights or on LoRA adapters.

The base is also the frozen reference. Its log-probabilities of every pair the run will see
(the training batches of all its steps and the evaluation batches) are computed once, before
training, with any adapters off (the same weights: no second model in memory), and kept in
RUN/reference.safetensors, which a resumed run reads back instead of computing them again. The
prompts are formatted as the base was instruction-tuned ("template" in its config.json), and
the final model is saved merged in RUN/model with that same template, so `respond`, `chat`,
`serve` and a GGUF export prompt it as the instruction model it came from.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gptlab import distributed
from gptlab.data import ResumableBatches
from gptlab.device import autocast, to_device
from gptlab.errors import GptlabError
from gptlab.hub import resolve_with_tokenizer
from gptlab.instructions import prompt_format
from gptlab.io import atomic_write
from gptlab.jobs.base import Session, TrainingJob, add_lora, save_final_model
from gptlab.preferences import (
    BUNDLED_PAIRS,
    PreferenceDataset,
    PreferenceObjective,
    check_format,
    collate_pairs,
    disable_dropout,
    load_pairs,
    reference_logprobs,
    split_pairs,
)
from gptlab.prompts import tuned_in_alpaca
from gptlab.respond import generate_responses
from gptlab.settings import PreferenceConfig, Sampling
from gptlab.training import Plan, TrainResult

log = logging.getLogger("gptlab")

REFERENCE = "reference.safetensors"  # the reference's log-probabilities of the run's pairs


def finetune_preference(
    c: PreferenceConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Preference-tune `c.base` on pairs in run folder `c.out`; returns results.json ({} unless
    this process finished the run; see gptlab.jobs.base)."""
    return PreferenceTuning(c).run(resume, stop_after)


def tuned_format(meta: dict[str, Any], asked: str | None, base: str) -> str:
    """The prompt format the base was instruction-tuned in: recorded in its config.json by
    finetune-instruct (or a preference run), or `asked` for a model tuned elsewhere. A base
    with neither, or `asked` against the recorded one, is one GptlabError."""
    recorded = meta.get("template") or ("alpaca" if tuned_in_alpaca(meta) else None)
    if recorded is None and asked is None:
        raise GptlabError(
            f"{base}: was not instruction-tuned (its config.json records no prompt template), "
            "and preference tuning starts from an instruction model: run `gptlab "
            f"finetune-instruct --base {base}` first and pass its run folder, or, for a model "
            "instruction-tuned elsewhere, name its format with --prompt-format chat (or alpaca)"
        )
    if recorded is not None and asked is not None and asked != recorded:
        raise GptlabError(
            f"{base}: was instruction-tuned in the {recorded} prompt format, not {asked}; "
            "drop --prompt-format (pairs are always formatted as the base was tuned)"
        )
    return asked or recorded  # type: ignore[return-value]


class PreferenceTuning(TrainingJob[PreferenceConfig]):
    task = "preference"
    loss_title = "DPO loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        with distributed.main_first():  # rank 0 downloads and converts a pretrained base
            self.model, meta, self.tokenizer = resolve_with_tokenizer(c.base, str(s.device))
        if self.model.cfg.n_classes is not None:
            raise GptlabError(f"{c.base}: is a classifier; pass an instruction-tuned model")
        self.format = prompt_format(tuned_format(meta, c.prompt_format, c.base), self.tokenizer)
        self.source = str(c.data or f"bundled {BUNDLED_PAIRS}")
        pairs = load_pairs(c.data)
        check_format(pairs, self.format, self.source)
        self.train_pairs, self.val_pairs = split_pairs(pairs, c.train.seed)
        if not self.train_pairs or not self.val_pairs:
            raise GptlabError(
                f"{self.source}: too few pairs ({len(pairs)}): holding out 10% leaves "
                f"{len(self.train_pairs)} to train on and {len(self.val_pairs)} held out (at "
                "least one each)"
            )
        context = self.model.cfg.context_length
        self.max_length = c.max_length or context
        if not 2 <= self.max_length <= context:
            raise GptlabError(f"--max-length must be between 2 and the context {context}")
        self.batches(s)
        disable_dropout(self.model)
        self.lora = add_lora(self.model, c)
        self.trainable = self.model.num_params(trainable_only=True)
        return {
            "model": self.model.cfg.to_dict(),
            "data": {
                "source": self.source,
                "train": len(self.train_pairs),
                "val": len(self.val_pairs),
                "template": self.format.name,
                "max_length": self.max_length,
            },
        }

    def batches(self, s: Session) -> None:
        c, t = self.c, self.c.train
        self.train_ds = PreferenceDataset(self.train_pairs, self.format)
        self.val_ds = PreferenceDataset(self.val_pairs, self.format)
        self.collate = partial(
            collate_pairs,
            max_length=self.max_length,
            end_id=self.format.end_id,
            pad_id=self.tokenizer.pad_id,
        )
        pin = s.device.type == "cuda" and c.speed.pin_memory
        self.train_batches = ResumableBatches(
            self.train_ds, t.batch_size, shuffle=True, seed=t.seed, collate_fn=self.collate,
            pin_memory=pin,
        )  # fmt: skip
        self.val_batches = ResumableBatches(
            self.val_ds, t.batch_size, shuffle=False, drop_last=False, collate_fn=self.collate
        )
        self.steps_per_epoch = max(1, self.train_batches.per_epoch // t.grad_accum)
        self.max_steps = t.max_steps or t.epochs * self.steps_per_epoch

    def build(self, s: Session) -> Plan:
        start = time.perf_counter()
        computed = self.reference(s)
        self.reference_seconds = time.perf_counter() - start
        if computed:
            log.info("reference: %d pairs in %.1f s", computed, self.reference_seconds)
        self.objective = PreferenceObjective(self.model, self.c.beta)
        meta = {"task": "lm", "template": self.format.name, "lora": self.lora}
        return Plan(
            self.model,
            self.train_batches,
            self.val_batches,
            self.max_steps,
            meta,
            loss_fn=self.objective,
            language_model=False,
            tokenizer=self.tokenizer,
            eval_metrics=self.objective,
        )

    def needed(self) -> dict[str, list[int]]:
        """The pairs of each split the run reads: its training batches, every step's, and
        the evaluation batches."""
        t = self.c.train
        n_batches = self.max_steps * t.grad_accum
        epochs = range(-(-n_batches // self.train_batches.per_epoch))
        order = [i for e in epochs for b in self.train_batches.epoch_batches(e) for i in b]
        evaluated = (t.eval_batches or len(self.train_ds)) * t.batch_size
        train = set(order[: n_batches * t.batch_size]) | set(
            range(min(evaluated, len(self.train_ds)))
        )
        return {"train": sorted(train), "val": list(range(min(evaluated, len(self.val_ds))))}

    def reference(self, s: Session) -> int:
        """Fill both datasets' reference log-probabilities: those RUN/reference.safetensors
        holds (a resumed run), then the rest the run needs, computed by the base with any
        adapters off; returns how many pairs were computed."""
        path = s.run.path / REFERENCE
        datasets = {"train": self.train_ds, "val": self.val_ds}
        if s.resume and path.is_file():
            for split, saved in load_file(str(path)).items():
                if saved.shape == datasets[split].reference.shape:
                    datasets[split].reference = saved
        computed = 0
        for split, indices in self.needed().items():
            ds = datasets[split]
            missing = [i for i in indices if bool(ds.reference[i].isnan().any())]
            self.compute_reference(s, ds, missing)
            computed += len(missing)
        if computed and s.d.is_main:
            state = {k: ds.reference.contiguous() for k, ds in datasets.items()}
            atomic_write(path, lambda p: save_file(state, str(p)))
        return computed

    def compute_reference(self, s: Session, ds: PreferenceDataset, indices: list[int]) -> None:
        """The base's log-probabilities of pairs `indices`, longest first in training-sized
        batches (little padding), into `ds.reference`."""
        model, size, lengths = self.model, self.c.train.batch_size, ds.lengths()
        model.to(s.device)
        order = sorted(indices, key=lambda i: -lengths[i])
        batches = [order[k : k + size] for k in range(0, len(order), size)]
        bar = tqdm(batches, desc="reference", unit="batch", disable=not s.d.is_main or not batches)
        with autocast(s.device, self.c.runtime.precision):
            for batch in bar:
                x, y, _ = to_device(self.collate([ds[i] for i in batch]), s.device)
                ds.reference[batch] = reference_logprobs(model, x, y).float().cpu()

    def on_eval(self, s: Session, plan: Plan, step: int, metrics: dict[str, Any]) -> None:
        pair = self.val_pairs[0]
        sampling = Sampling(max_new_tokens=self.c.sample_tokens)
        answer = generate_responses(plan.model, [pair["prompt"]], sampling, self.format)[0]
        if s.d.is_main:
            prompt = pair["prompt"].get("instruction") or pair["prompt"]["messages"][-1]["content"]
            s.run.add_sample(step, f"{prompt!r} -> {answer!r}")
        plan.model.train()

    def plots(self, s: Session) -> None:
        super().plots(s)
        kind = PreferenceObjective.kind
        s.run.plot(
            "rewards.png",
            {"train margin": (kind, "train_margin"), "held-out margin": (kind, "val_margin")},
            "reward margin (chosen - rejected)",
            "DPO reward margin",
        )
        s.run.plot(
            "accuracy.png",
            {"train": (kind, "train_accuracy"), "held out": (kind, "val_accuracy")},
            "reward accuracy",
            "pairs whose chosen response earns the higher reward",
        )

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        c, model = self.c, plan.model
        meta = {"task": "lm", "template": self.format.name}
        model_dir = save_final_model(s, plan, weights, meta, self.lora)
        evals = [r for r in s.run.metrics() if r.get("kind") == PreferenceObjective.kind]
        last = {k: v for k, v in evals[-1].items() if k not in ("kind", "step")} if evals else {}
        return {
            "task": "preference",
            "base": c.base,
            "model": str(model_dir),
            "template": self.format.name,
            "beta": c.beta,
            "steps": result.step,
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            **last,
            "train_seconds": result.seconds,
            "reference_seconds": self.reference_seconds,
            "pairs": {"train": len(self.train_pairs), "val": len(self.val_pairs)},
            "trainable_params": self.trainable,
            "total_params": model.num_params(),
            "lora": self.lora,
        }
