"""`gptlab finetune-instruct`: teach a GPT to follow Alpaca-style instructions."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from gptlab import distributed
from gptlab.commands.common import add_command, add_device_args, positive_int
from gptlab.config import PRESETS
from gptlab.instruct import InstructConfig, finetune_instruct
from gptlab.lora import TARGETS

DEFAULTS = InstructConfig()


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "finetune-instruct",
        run,
        "instruction fine-tuning (full or LoRA)",
        "Fine-tune a language model on instruction/input/output data (default: the bundled "
        "1,100 entries) in the Alpaca template, writing a run folder with the loss plot, "
        "checkpoints, the test split (test.json), the merged model (model/) and results.json.",
    )
    p.add_argument(
        "--base",
        default=DEFAULTS.base,
        help="model folder, run folder, pretrained preset (gpt2-medium...), or 'random'",
    )
    p.add_argument(
        "--preset", default=DEFAULTS.preset, choices=list(PRESETS), help="shape of a random base"
    )
    p.add_argument("--data", type=Path, default=None, help="JSON or JSON Lines file")
    p.add_argument("--out", type=Path, default=DEFAULTS.out, help="run folder")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    p.add_argument("--max-steps", type=positive_int, default=None, help="overrides --epochs")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps)
    p.add_argument("--grad-accum", type=positive_int, default=DEFAULTS.grad_accum)
    p.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip)
    p.add_argument(
        "--max-length", type=positive_int, default=None, help="default: the model's context"
    )
    p.add_argument("--mask-prompt", action="store_true", help="learn the response tokens only")
    p.add_argument(
        "--group-by-length", action="store_true", help="batch similar lengths to cut padding"
    )
    p.add_argument(
        "--lora-rank", type=positive_int, default=None, help="train LoRA adapters of this rank"
    )
    p.add_argument("--lora-alpha", type=float, default=DEFAULTS.lora_alpha)
    p.add_argument(
        "--lora-targets",
        nargs="+",
        choices=list(TARGETS),
        default=list(DEFAULTS.lora_targets),
        help="block layers that get adapters",
    )
    p.add_argument(
        "--grad-checkpointing", action="store_true", help="trade compute for activation memory"
    )
    p.add_argument("--eval-interval", type=positive_int, default=DEFAULTS.eval_interval)
    p.add_argument(
        "--eval-batches", type=positive_int, default=DEFAULTS.eval_batches, help="per evaluation"
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_device_args(p)


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(InstructConfig)}
    config = InstructConfig(**{k: v for k, v in vars(args).items() if k in names})
    config.lora_targets = tuple(config.lora_targets)
    results = finetune_instruct(config, resume=args.resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"done: {results['steps']} steps, {results['tokens_seen']:,} tokens in "
        f"{results['train_seconds']:.0f} s; train loss {results['train_loss']:.3f}, "
        f"val loss {results['val_loss']:.3f}; padding {results['padding_fraction']:.1%}"
    )
    print(f"model: {results['model']}")
    print(
        f"test split: {results['test_data']}  (next: gptlab respond --model {config.out} "
        f"--data {results['test_data']} --out responses.json)"
    )
    return 0
