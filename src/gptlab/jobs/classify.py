"""Classification fine-tuning: turn a decoder into an N-way text classifier (SMS spam by
default), on the job skeleton (gptlab.jobs.base).

The data come from gptlab.labelled, the model side (head, freezing, cached prefix, logits,
scores) from gptlab.classifier. The loop is gptlab.training.train (atomic checkpoints, exact
resume, SIGINT), evaluated once per epoch (or every --eval-interval steps); each evaluation
also measures accuracy per split, and the best model by validation accuracy is kept in
RUN/model and scored on the test split.

From scratch (`base="random"`), a random model knows no language; `--pretrain-on-texts` first
pretrains it (gptlab.jobs.pretrain.pretrain_on_texts) on the unlabelled in-domain text that
training may see (the training texts and the texts left out by balancing, never validation
or test).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gptlab import distributed
from gptlab import text as text_tokenizers
from gptlab.checkpoints import load_model_folder, read_config
from gptlab.classifier import (
    cache_prefix,
    class_logits,
    classifier_from,
    metrics,
    predict_proba,
    save_classifier,
    set_trainable,
    uselessness,
)
from gptlab.data import ResumableBatches
from gptlab.hub import base_with_tokenizer
from gptlab.jobs.base import Session, TrainingJob
from gptlab.jobs.pretrain import pretrain_on_texts
from gptlab.labelled import ClassificationDataset, collate, load_splits
from gptlab.model import Decoder
from gptlab.runs import MODEL
from gptlab.settings import ClassifierConfig, PretrainConfig, TrainArgs
from gptlab.training import Plan, TrainResult

log = logging.getLogger(__name__)


def _logits_and_loss(
    model: nn.Module, batch: Any, start: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    x, last, y = batch
    logits = class_logits(model, x, last, start)  # type: ignore[arg-type]
    return logits, F.cross_entropy(logits.float(), y)


def classification_loss(
    model: nn.Module, batch: Any, start: int | None = None
) -> tuple[torch.Tensor, int]:
    """The loss function for gptlab.training.train: mean cross-entropy per example, from token
    ids or, with `start`, from cached hidden states entering block `start`."""
    return _logits_and_loss(model, batch, start)[1], len(batch[2])


class Accuracy:
    """The classifier's evaluation metrics (gptlab.training.EvalMetrics): accuracy per split,
    counted from the very logits the evaluation loss comes from, so no second pass over the
    data; logged as the "accuracy" record, with the epoch it was measured at."""

    kind = "accuracy"

    def __init__(self, start: int | None, per_epoch: int) -> None:
        self.start, self.per_epoch = start, per_epoch
        self.tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def loss(self, model: nn.Module, batch: Any, split: str) -> tuple[torch.Tensor, int]:
        logits, loss = _logits_and_loss(model, batch, self.start)
        y, counts = batch[2], self.tally[split]
        counts[0] += int((logits.argmax(-1) == y).sum())
        counts[1] += len(y)
        return loss, len(y)

    def collect(self, step: int) -> dict[str, Any]:
        correct = {split: c / max(n, 1) for split, (c, n) in self.tally.items()}
        self.tally.clear()
        return {
            "epoch": step / self.per_epoch,
            "train_acc": correct.get("train", 0.0),
            "val_acc": correct.get("val", 0.0),
        }


def finetune_classifier(
    c: ClassifierConfig, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Run (or resume) a classification fine-tuning job in `c.out`; returns results.json
    ({} unless this process finished the run; see gptlab.jobs.base)."""
    return ClassifierTraining(c).run(resume, stop_after)


class ClassifierTraining(TrainingJob[ClassifierConfig]):
    """Evaluated once per epoch, or every `eval_interval` steps when one is given; the best
    model by validation accuracy is kept in RUN/model and scored on the test split at the
    end."""

    task = "classify"
    loss_title = "classification loss"

    def prepare(self, s: Session) -> dict[str, Any]:
        c = self.c
        self.wall_start = time.perf_counter()
        self.data = data = load_splits(c)
        # a bad --base fails here, before the run folder exists; rank 0 downloads it first
        with distributed.main_first():
            self.base, self.tokenizer = (
                (None, text_tokenizers.gpt2())  # pretraining tokenizes with GPT-2's
                if c.pretrain_on_texts
                else base_with_tokenizer(c.base, c.preset, c.train.seed)
            )
        counts = Counter(label for _, label in data.train + data.val + data.test)
        return {
            "labels": list(data.labels),
            "data": {
                "examples": data.n_examples,
                "per_label": {data.labels[i]: n for i, n in sorted(counts.items())},
                "left_out_by_balancing": len(data.left_out),
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
            },
        }

    def build(self, s: Session) -> Plan:
        c, data = self.c, self.data
        base = self.base or self.pretrained(s)
        self.base = None
        model = classifier_from(base, len(data.labels), c.dropout, c.train.seed)
        del base
        frozen = set_trainable(model, c.trainable, c.trainable_blocks, c.lora_rank, c.lora_alpha)
        model.to(s.device)
        train_batches, val_batches = self.batches(s, model, frozen)
        self.per_epoch = per_epoch = train_batches.per_epoch
        # evaluated once per epoch unless --eval-interval says otherwise
        eval_interval = c.train.eval_interval or per_epoch
        log_interval = min(c.train.log_interval, per_epoch)
        self.c = c.replace(
            train=c.train.replace(eval_interval=eval_interval, log_interval=log_interval)
        )
        self.best_path = s.run.path / MODEL
        self.best = (
            read_config(self.best_path)["val_acc"] if s.resume and self.best_path.is_dir() else -1.0
        )
        self.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        start = frozen if self.cached else None
        return Plan(
            model,
            train_batches,
            val_batches,
            c.train.max_steps or c.train.epochs * per_epoch,
            meta=self.meta,
            loss_fn=partial(classification_loss, start=start),
            language_model=False,
            eval_metrics=Accuracy(start, per_epoch),
        )

    def batches(
        self, s: Session, model: Decoder, frozen: int
    ) -> tuple[ResumableBatches, ResumableBatches]:
        """Training and validation batches of the encoded splits, the `frozen` blocks' output
        computed once where it can be (`cached`)."""
        c, data, pad_id = self.c, self.data, self.tokenizer.pad_id
        max_length = min(c.max_length or model.cfg.context_length, model.cfg.context_length)
        self.meta = {"task": "classify", "labels": list(data.labels), "max_length": max_length}
        self.datasets = datasets = {
            name: ClassificationDataset.from_texts(ex, max_length, self.tokenizer)
            for name, ex in (("train", data.train), ("val", data.val), ("test", data.test))
        }
        pad_to = datasets["train"].longest() if c.pad_to_longest else None
        # The cached tail runs outside the model's forward, where a DDP wrapper would not see it.
        self.cached = c.cache_prefix and frozen > 0 and c.dropout == 0.0 and s.d.world == 1
        if self.cached:
            for name in ("train", "val"):
                datasets[name] = cache_prefix(model, datasets[name], frozen, s.device, 32, pad_id)
        collate_fn = partial(collate, pad_to=pad_to, pad_id=pad_id)

        def batches(name: str, shuffle: bool) -> ResumableBatches:
            return ResumableBatches(
                datasets[name],
                c.train.batch_size,
                shuffle=shuffle,
                seed=c.train.seed,
                drop_last=shuffle,
                collate_fn=collate_fn,
            )

        return batches("train", True), batches("val", False)

    def on_eval(self, s: Session, plan: Plan, step: int, metrics: dict[str, Any]) -> None:
        if not s.d.is_main:
            return
        val_acc = metrics["val_acc"]
        tqdm.write(
            f"epoch {metrics['epoch']:g}: train acc {metrics['train_acc']:.3f}, "
            f"val acc {val_acc:.3f}"
        )
        if val_acc > self.best:
            self.best = val_acc
            meta = {**self.meta, "step": step, "val_acc": val_acc}
            save_classifier(plan.model, self.best_path, meta, self.tokenizer)

    def pretrained(self, s: Session) -> Decoder:
        """A random `preset` model pretrained on the texts training may see, in
        RUN/pretrain (resumable; skipped when finished)."""
        c, p = self.c, self.c.pretrain
        config = PretrainConfig(
            out=c.out / "pretrain",
            preset=c.preset,
            context=p.context,
            dropout=p.dropout,
            sample_prompt="Hey",
            train=TrainArgs(
                max_steps=p.steps,
                batch_size=p.batch_size,
                lr=p.lr,
                warmup_steps=min(100, p.steps // 10),
                # one evaluation, at the end: each pass over all windows costs ~1/3 epoch
                eval_interval=p.steps,
                keep_checkpoints=c.train.keep_checkpoints,
                checkpoint_minutes=c.train.checkpoint_minutes,
                seed=c.train.seed,
            ),
            speed=c.speed,
            runtime=c.runtime.replace(device=str(s.device)),
        )
        pretrain_on_texts(config, self.data.unlabelled_texts)
        model, _ = load_model_folder(config.out / MODEL)
        return model

    def plots(self, s: Session) -> None:
        super().plots(s)
        s.run.plot(
            "accuracy.png",
            {"train": ("accuracy", "train_acc"), "validation": ("accuracy", "val_acc")},
            "accuracy",
            "classification accuracy",
        )

    def results(
        self, s: Session, plan: Plan, result: TrainResult, weights: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        c, data = self.c, self.data
        best_model, best_meta = load_model_folder(self.best_path, device=str(s.device))
        test = self.datasets["test"]
        seqs = [seq for seq, _ in test.items]
        probs = predict_proba(
            best_model, seqs, s.device, precision=c.runtime.precision, pad_id=self.tokenizer.pad_id
        )
        y_true = torch.tensor([label for _, label in test.items])
        scores = metrics(y_true, probs.argmax(-1), data.labels)
        useless = uselessness(scores["confusion_matrix"], data.labels)
        if useless:
            log.warning("%s: this classifier learned nothing usable: %s", c.out, useless)
        return {
            "task": "classify",
            "labels": list(data.labels),
            "test_accuracy": scores.pop("accuracy"),
            **({"useless": useless} if useless else {}),
            **scores,
            "best_val_accuracy": best_meta["val_acc"],
            "best_epoch": best_meta["step"] / self.per_epoch,
            "epochs": c.train.epochs,
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "trainable": c.trainable,
            "trainable_params": self.trainable_params,
            "cached_prefix": self.cached,
            "train_seconds": result.seconds,
            "wall_seconds": time.perf_counter() - self.wall_start,
        }
