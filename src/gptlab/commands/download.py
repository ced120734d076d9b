"""`gptlab download`: fetch a pretrained GPT-2 and convert it into the local cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.commands.common import add_command
from gptlab.config import OPENAI_SIZES
from gptlab.hub import default_cache_dir, ensure_pretrained


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "download",
        run,
        "download OpenAI's pretrained GPT-2 weights",
        "Download a pretrained GPT-2 (OpenAI's TensorFlow checkpoint, or Hugging Face's "
        "model.safetensors with --source hf), resuming partial files, and convert it once into "
        "a gptlab model folder in the cache. --model NAME anywhere then loads it.",
    )
    p.add_argument("name", choices=list(OPENAI_SIZES))
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"default: $GPTLAB_CACHE or {default_cache_dir()}",
    )
    p.add_argument("--base-url", default=None, help="a mirror of the source's file layout")
    p.add_argument("--source", choices=["openai", "hf"], default="openai")


def run(args: argparse.Namespace) -> int:
    folder = ensure_pretrained(args.name, args.cache_dir, args.base_url, source=args.source)
    print(f"{args.name}: {folder}")
    return 0
