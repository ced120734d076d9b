"""Argument groups that several verbs share, so each flag means the same everywhere."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gptlab.generation import Sampling
from gptlab.tokenizer import EOT_ID


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_command(
    sub: Any, name: str, run: Callable[[argparse.Namespace], int], help: str, description: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.set_defaults(func=run)
    return p


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cuda, mps, cpu, or auto (best available)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 autocast on GPU, fp32 on CPU",
    )


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """The training speed flags of gptlab.training.TrainConfig (see docs/scale.md)."""
    g = p.add_argument_group("speed (see docs/scale.md)")
    on = argparse.BooleanOptionalAction
    g.add_argument("--tf32", action=on, default=True, help="TF32 matmuls on CUDA")
    g.add_argument("--fused-adamw", action=on, default=True, help="fused AdamW kernel")
    g.add_argument(
        "--pin-memory", action=on, default=True, help="pinned, asynchronous batch copies (CUDA)"
    )
    g.add_argument("--compile", action=on, default=False, help="torch.compile the model")
    g.add_argument(
        "--gradient-checkpointing",
        action=on,
        default=False,
        help="recompute activations in backward: less memory, about 30%% more compute",
    )
    g.add_argument(
        "--fsdp",
        action=on,
        default=False,
        help="shard parameters, gradients and optimizer state across torchrun processes",
    )


def speed_flags(args: argparse.Namespace) -> dict[str, bool]:
    """TrainConfig keyword arguments from `add_speed_args` flags."""
    names = ("tf32", "fused_adamw", "pin_memory", "compile", "gradient_checkpointing", "fsdp")
    return {n: getattr(args, n) for n in names}


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 64) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="0 means greedy decoding"
    )
    g.add_argument("--top-k", type=positive_int, default=None)
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--no-stop", action="store_true", help="do not stop at <|endoftext|>")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="also stop when the output contains TEXT (repeatable)",
    )
    g.add_argument(
        "--on-context-full",
        choices=["slide", "stop"],
        default="slide",
        help="slide the window and go on, or stop, when the context is full",
    )


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    return Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_ids=() if args.no_stop else (EOT_ID,),
        stop_strings=tuple(args.stop),
        on_context_full=args.on_context_full,
    )
