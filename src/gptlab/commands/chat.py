"""`gptlab chat`: type instructions, read the model's responses as they are generated."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gptlab.commands.common import add_command, add_sampling_args, sampling_from_args
from gptlab.hub import resolve_model
from gptlab.instruct import stream_response
from gptlab.training import pick_device

INPUT_SEPARATOR = " || "


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "chat",
        run,
        "chat with an instruction-tuned model",
        "Read one instruction per line and stream the model's response, using the Alpaca "
        f"template. Text after '{INPUT_SEPARATOR.strip()}' on a line becomes the template's "
        "input section. An empty line or end of input quits.",
    )
    p.add_argument("--model", required=True, help="run folder, model folder or preset")
    p.add_argument("--device", default="auto")
    add_sampling_args(p, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    device = pick_device(args.device)
    model, _ = resolve_model(args.model, device=str(device))
    model.to(device).eval()
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type an instruction (optionally 'instruction || input'); empty line quits.")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        instruction, _, input_text = line.strip().partition(INPUT_SEPARATOR.strip())
        for piece in stream_response(model, instruction.strip(), sampling, input_text.strip()):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
