"""`gptlab generate`: continue a prompt, streamed to the terminal, in the model's own tokenizer
(a GGUF file's or a folder's tokenizer.json; GPT-2's otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, TextStream, generate_tokens, tokenizer_sampling
from gptlab.hub import resolve_with_tokenizer
from gptlab.settings import GenerateConfig


def run(c: GenerateConfig) -> int:
    if not c.prompt:
        raise GptlabError("--prompt is empty")
    device = pick_device(c.device.device)
    model, _, tokenizer = resolve_with_tokenizer(c.model, device=str(device))
    prompt = tokenizer.encode(c.prompt)
    if not prompt:
        raise GptlabError("--prompt is empty")
    model.to(device)
    if model.cfg.n_classes is not None:
        raise GptlabError(f"{c.model}: is a classifier; it cannot generate text")
    stats = GenerationStats()
    sampling = tokenizer_sampling(c.sampling, tokenizer)

    def tokens() -> Iterator[int]:
        steps = generate_tokens(model, [prompt], sampling, stats=stats, tokenizer=tokenizer)
        for nxt, active in steps:
            if not bool(active[0]):
                return
            yield int(nxt[0])

    sys.stdout.write(c.prompt)
    sys.stdout.flush()
    text = TextStream(tokenizer=tokenizer)
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
