"""`gptlab prepare-data`: tokenize a large corpus into memory-mapped token shards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.commands.common import add_command, positive_int
from gptlab.shards import prepare_data, verify_shards


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "prepare-data",
        run,
        "tokenize a corpus into token shards for pretraining",
        "Tokenize a folder of .txt files (one document each) and .jsonl files (one document "
        "per line) into uint16 token shards plus manifest.json, in parallel; pass the output "
        "folder to `gptlab pretrain --data-dir`.",
    )
    p.add_argument("src", type=Path, help="a .txt or .jsonl file, or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="folder for the shards")
    p.add_argument("--text-field", default="text", help="the JSON Lines field holding the text")
    p.add_argument(
        "--workers", type=positive_int, default=None, help="processes (default: one per core)"
    )
    p.add_argument(
        "--chunk-mb",
        type=float,
        default=None,
        help="input MB per shard (default: about four per worker, at most 64)",
    )
    p.add_argument("--verify", action="store_true", help="re-read the shards and check sha256")


def run(args: argparse.Namespace) -> int:
    m = prepare_data(args.src, args.out, args.workers, args.text_field, args.chunk_mb)
    if args.verify:
        verify_shards(args.out)
    mb = m["input_bytes"] / 1e6
    print(
        f"done: {m['documents']:,} documents, {mb:,.1f} MB -> {m['total_tokens']:,} tokens in "
        f"{len(m['shards'])} shards, {m['seconds']:.1f} s ({mb / max(m['seconds'], 1e-9):.1f} "
        f"MB/s); manifest: {args.out / 'manifest.json'}"
    )
    return 0
