"""`gptlab generate`: continue a prompt, streamed to the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, TextStream, generate_tokens
from gptlab.hub import resolve_model
from gptlab.settings import GenerateConfig
from gptlab.tokenizer import encode
from gptlab.training import pick_device


def run(c: GenerateConfig) -> int:
    prompt = encode(c.prompt)
    if not prompt:
        raise GptlabError("--prompt is empty")
    device = pick_device(c.device.device)
    model, _ = resolve_model(c.model, device=str(device))
    model.to(device)
    if model.cfg.n_classes is not None:
        raise GptlabError(f"{c.model}: is a classifier; it cannot generate text")
    stats = GenerationStats()

    def tokens() -> Iterator[int]:
        for nxt, active in generate_tokens(model, [prompt], c.sampling, stats=stats):
            if not bool(active[0]):
                return
            yield int(nxt[0])

    sys.stdout.write(c.prompt)
    sys.stdout.flush()
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
