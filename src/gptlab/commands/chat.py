"""`gptlab chat`: type instructions, read the model's responses as they are generated."""

from __future__ import annotations

import sys

from gptlab.hub import resolve_model
from gptlab.instruct import stream_response
from gptlab.settings import ChatConfig
from gptlab.training import pick_device

INPUT_SEPARATOR = "||"


def run(c: ChatConfig) -> int:
    device = pick_device(c.device.device)
    model, _ = resolve_model(c.model, device=str(device))
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
        instruction, _, input_text = line.strip().partition(INPUT_SEPARATOR)
        for piece in stream_response(model, instruction.strip(), c.sampling, input_text.strip()):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
