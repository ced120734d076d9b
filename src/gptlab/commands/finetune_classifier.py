"""`gptlab finetune-classifier`: fine-tune a GPT into a text classifier (SMS spam by default)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from gptlab import distributed
from gptlab.classify import TRAINABLE, ClassifierConfig, finetune_classifier
from gptlab.commands.common import add_command, add_device_args, positive_int
from gptlab.config import PRESETS

DEFAULTS = ClassifierConfig()


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "finetune-classifier",
        run,
        "fine-tune a GPT into a text classifier",
        "Replace a GPT's output layer with an N-way head and fine-tune it on labelled texts "
        "(default: the bundled SMS Spam Collection, balanced and split 70/10/20). Writes a run "
        "folder with metrics, loss and accuracy plots, the best classifier by validation "
        "accuracy in RUN/model, and test metrics in RUN/results.json.",
    )
    p.add_argument("--out", type=Path, default=DEFAULTS.out, help="run folder")
    p.add_argument(
        "--base",
        default=DEFAULTS.base,
        help="pretrained preset (gpt2-small...), run or model folder, or 'random'",
    )
    p.add_argument(
        "--preset", default=DEFAULTS.preset, choices=list(PRESETS), help="shape for --base random"
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None, help="TSV/CSV with label and text columns")
    data.add_argument(
        "--download", action="store_true", help="fetch the SMS Spam Collection from UCI"
    )
    data.add_argument(
        "--labels", default=None, help="comma-separated label names (others are errors)"
    )
    data.add_argument("--no-balance", dest="balance", action="store_false")
    data.add_argument("--max-length", type=positive_int, default=None, help="truncate texts")
    data.add_argument(
        "--pad-to-longest",
        action="store_true",
        help="pad every batch to the longest training text (the original recipe)",
    )
    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    tr.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    tr.add_argument("--lr", type=float, default=DEFAULTS.lr)
    tr.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    tr.add_argument("--trainable", choices=TRAINABLE, default=DEFAULTS.trainable)
    tr.add_argument(
        "--trainable-blocks", type=positive_int, default=DEFAULTS.trainable_blocks, help="k"
    )
    tr.add_argument("--lora-rank", type=positive_int, default=DEFAULTS.lora_rank)
    tr.add_argument("--lora-alpha", type=float, default=DEFAULTS.lora_alpha)
    tr.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    tr.add_argument(
        "--no-cache-prefix",
        dest="cache_prefix",
        action="store_false",
        help="recompute the frozen blocks every step (the plain loop)",
    )
    tr.add_argument("--seed", type=int, default=DEFAULTS.seed)
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    pre = p.add_argument_group("pretraining from random weights")
    pre.add_argument(
        "--pretrain-on-texts",
        action="store_true",
        help="first pretrain the random model on the training texts and the texts left out "
        "by balancing (never validation or test)",
    )
    pre.add_argument("--pretrain-steps", type=positive_int, default=DEFAULTS.pretrain_steps)
    pre.add_argument(
        "--pretrain-batch-size", type=positive_int, default=DEFAULTS.pretrain_batch_size
    )
    pre.add_argument("--pretrain-context", type=positive_int, default=DEFAULTS.pretrain_context)
    pre.add_argument("--pretrain-lr", type=float, default=DEFAULTS.pretrain_lr)
    pre.add_argument("--pretrain-dropout", type=float, default=DEFAULTS.pretrain_dropout)
    add_device_args(p)


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(ClassifierConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if args.labels is not None:
        values["labels"] = tuple(s.strip() for s in args.labels.split(",") if s.strip())
    results = finetune_classifier(ClassifierConfig(**values), resume=args.resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"test accuracy {results['test_accuracy']:.4f}, precision {results['precision']:.4f}, "
        f"recall {results['recall']:.4f}, f1 {results['f1']:.4f} "
        f"({results['averaging']}; {results['n_test']} test texts)"
    )
    print(f"confusion matrix (rows true, columns predicted {results['labels']}):")
    for name, row in zip(results["labels"], results["confusion_matrix"], strict=True):
        print(f"  {name:>12}: {row}")
    print(f"classifier: {args.out / 'model'}  (gptlab classify --model {args.out} TEXT)")
    return 0
