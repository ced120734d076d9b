"""`gptlab generate`: continue a prompt, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from gptlab.commands.common import add_command, add_sampling_args, sampling_from_args
from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, TextStream, generate_tokens
from gptlab.hub import resolve_model
from gptlab.tokenizer import encode
from gptlab.training import pick_device


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "generate",
        run,
        "generate text from a prompt",
        "Continue --prompt with a trained model (a run folder, a model folder, or a "
        "pretrained preset such as gpt2-small), printing tokens as they come.",
    )
    p.add_argument("--model", required=True, help="run folder, model folder or preset")
    p.add_argument("--prompt", required=True)
    p.add_argument("--device", default="auto")
    add_sampling_args(p)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    device = pick_device(args.device)
    model, _ = resolve_model(args.model, device=str(device))
    model.to(device)
    prompt = encode(args.prompt)
    if not prompt:
        raise GptlabError("--prompt is empty")
    stats = GenerationStats()
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def tokens() -> Any:
        for nxt, active in generate_tokens(model, [prompt], sampling, stats=stats):
            if not bool(active[0]):
                return
            yield int(nxt[0])

    text = TextStream()
    with torch.inference_mode():
        for token in tokens():
            sys.stdout.write(text.push(token))
            sys.stdout.flush()
        sys.stdout.write(text.flush())
    sys.stdout.write("\n")
    if stats.hit_context_limit:
        print(
            f"[stopped: reached the context length of {model.cfg.context_length} tokens]",
            file=sys.stderr,
        )
    return 0
