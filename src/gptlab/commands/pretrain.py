"""`gptlab pretrain`: train a GPT from scratch on a text corpus."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from gptlab import distributed
from gptlab.commands.common import add_command, add_device_args, add_speed_args, positive_int
from gptlab.config import PRESETS
from gptlab.pretrain import PretrainConfig, pretrain

DEFAULTS = PretrainConfig()


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "pretrain",
        run,
        "pretrain a GPT from scratch on text",
        "Pretrain a GPT on a UTF-8 text file or a folder of .txt files (default: the "
        "bundled short story), or on token shards from `gptlab prepare-data`, writing a run "
        "folder with config, metrics, loss plot, samples and checkpoints. Runs data-parallel "
        "under `torchrun --nproc-per-node N -m gptlab pretrain ...` (--batch-size is then "
        "the global batch).",
    )
    p.add_argument("--corpus", type=Path, default=None, help="text file or folder of .txt files")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="token shards made by `gptlab prepare-data`"
    )
    p.add_argument("--out", type=Path, default=DEFAULTS.out, help="run folder")
    p.add_argument("--preset", default=DEFAULTS.preset, choices=list(PRESETS))
    p.add_argument(
        "--context",
        type=positive_int,
        default=None,
        help="window length in tokens (default: the preset's context)",
    )
    p.add_argument("--stride", type=positive_int, default=None, help="default: the window length")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction)
    p.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    p.add_argument("--max-steps", type=positive_int, default=None, help="overrides --epochs")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps)
    p.add_argument("--grad-accum", type=positive_int, default=DEFAULTS.grad_accum)
    p.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip)
    p.add_argument("--eval-interval", type=positive_int, default=DEFAULTS.eval_interval)
    p.add_argument(
        "--eval-batches",
        type=positive_int,
        default=None,
        help="batches per evaluation (default: all; 20 with --data-dir)",
    )
    p.add_argument("--sample-prompt", default=DEFAULTS.sample_prompt)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_device_args(p)
    add_speed_args(p)


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = pretrain(config, resume=args.resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    samples = config.out / "samples.txt"
    print(
        f"done: {result.step} steps, {result.tokens_seen:,} tokens in {result.seconds:.0f} s; "
        f"train loss {result.train_loss:.3f}, val loss {result.val_loss:.3f}"
    )
    if samples.exists():
        print("sample:", samples.read_text(encoding="utf-8").strip().splitlines()[-1])
    print(f"run folder: {config.out}")
    return 0
