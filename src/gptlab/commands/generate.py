"""`gptlab generate`: continue a prompt, streamed to the terminal, in the model's own tokenizer
(a GGUF file's or a folder's tokenizer.json; GPT-2's otherwise)."""

from __future__ import annotations

import sys

from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, TextStream
from gptlab.llm import load
from gptlab.settings import GenerateConfig


def run(c: GenerateConfig) -> int:
    if not c.prompt:
        raise GptlabError("--prompt is empty")
    llm = load(c.model, **c.device.load_options())
    prompt = llm.tokenizer.encode(c.prompt)
    if not prompt:
        raise GptlabError("--prompt is empty")
    llm.check_language_model()
    stats = GenerationStats()
    sys.stdout.write(c.prompt)
    sys.stdout.flush()
    text = TextStream(tokenizer=llm.tokenizer)
    for token in llm.tokens(prompt, c.sampling, stats):
        sys.stdout.write(text.push(token))
        sys.stdout.flush()
    sys.stdout.write(text.flush())
    sys.stdout.write("\n")
    if stats.hit_context_limit:
        print(
            f"[stopped: reached the context length of {llm.model.cfg.context_length} tokens]",
            file=sys.stderr,
        )
    return 0
