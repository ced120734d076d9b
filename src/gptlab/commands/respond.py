"""`gptlab respond`: write a model's response to every entry of an instruction data file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.commands.common import add_command, add_sampling_args, positive_int, sampling_from_args
from gptlab.instruct import respond


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "respond",
        run,
        "generate responses for instruction data",
        "Generate a response for each entry of a JSON / JSON Lines file of instructions (KV "
        "cache, batched, greedy by default, stopping at <|endoftext|> or '###') and write the "
        "entries with a 'model_response' field. Progress is saved as it goes: rerunning an "
        "interrupted command continues where it stopped.",
    )
    p.add_argument("--model", required=True, help="run folder, model folder or preset")
    p.add_argument("--data", type=Path, required=True, help="e.g. RUN/test.json")
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="auto")
    add_sampling_args(p, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    out = respond(
        args.model,
        args.data,
        args.out,
        sampling_from_args(args),
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"responses: {out}")
    return 0
