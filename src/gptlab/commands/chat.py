"""`gptlab chat`: type instructions, read the model's responses as they are generated.

A model whose tokenizer has a chat template (a GGUF file's, or a folder's tokenizer_config.json)
is prompted in it, and the conversation is kept: every turn renders all the messages so far.
Any other model gets the Alpaca template (gptlab.prompts), one instruction at a time, as
instruction fine-tuning taught it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

from gptlab.generation import TextStream, generate_tokens, tokenizer_sampling
from gptlab.hub import resolve_with_tokenizer
from gptlab.instruct import instruct_sampling, stream_response
from gptlab.prompts import format_prompt
from gptlab.settings import ChatConfig, Sampling
from gptlab.text import GPT2Tokenizer, Tokenizer
from gptlab.training import pick_device

INPUT_SEPARATOR = "||"


def stream_reply(
    model: Any, prompt: Sequence[int], sampling: Sampling, tokenizer: Tokenizer
) -> Iterator[str]:
    """The reply to `prompt` (token ids) piece by piece, cut at a stop id or string, without
    the whitespace it ends with (held until more text follows)."""
    s = tokenizer_sampling(sampling, tokenizer)
    stream = TextStream(s.stop_strings, tokenizer=tokenizer)

    def pieces() -> Iterator[str]:
        for nxt, active in generate_tokens(model, [list(prompt)], s, tokenizer=tokenizer):
            if not bool(active[0]):
                break
            yield stream.push(int(nxt[0]))
            if stream.stopped:
                break
        yield stream.flush()

    spaces = ""
    for piece in pieces():
        text = spaces + piece
        shown = text.rstrip()
        if shown:
            yield shown
        spaces = text[len(shown) :]


def run(c: ChatConfig) -> int:
    device = pick_device(c.device.device)
    model, _, tokenizer = resolve_with_tokenizer(c.model, device=str(device))
    model.to(device).eval()
    templated = tokenizer.chat_template is not None
    messages: list[dict[str, str]] = []
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
        instruction, input_text = instruction.strip(), input_text.strip()
        if templated:
            content = f"{instruction}\n\n{input_text}" if input_text else instruction
            messages.append({"role": "user", "content": content})
            prompt = tokenizer.encode(tokenizer.render_chat(messages), add_bos=False)
            pieces = stream_reply(model, prompt, c.sampling, tokenizer)
        elif isinstance(tokenizer, GPT2Tokenizer):
            pieces = stream_response(model, instruction, c.sampling, input_text)
        else:
            prompt = tokenizer.encode(format_prompt(instruction, input_text), allow_special=False)
            pieces = stream_reply(model, prompt, instruct_sampling(c.sampling), tokenizer)
        reply = ""
        for piece in pieces:
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if templated:
            messages.append({"role": "assistant", "content": reply})
