"""`gptlab chat`: type instructions, read the model's responses as they are generated.

A model whose tokenizer has a chat template (a GGUF file's, or a folder's tokenizer_config.json)
is prompted in it, and the conversation is kept: every turn renders all the messages so far.
Any other model, and one that gptlab fine-tuned in the Alpaca template, gets that template
(gptlab.prompts), one instruction at a time, as instruction fine-tuning taught it.
"""

from __future__ import annotations

import sys

from gptlab.generation import stream_text
from gptlab.llm import load
from gptlab.prompts import format_prompt
from gptlab.respond import instruct_sampling
from gptlab.settings import ChatConfig

INPUT_SEPARATOR = "||"


def run(c: ChatConfig) -> int:
    llm = load(c.model, **c.device.load_options())
    model, tokenizer = llm.model, llm.tokenizer
    templated = llm.chat_template is not None
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
            pieces = stream_text(model, prompt, c.sampling, tokenizer)
        else:
            prompt = tokenizer.encode(format_prompt(instruction, input_text), allow_special=False)
            pieces = stream_text(model, prompt, instruct_sampling(c.sampling), tokenizer)
        reply = ""
        for piece in pieces:
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if templated:
            messages.append({"role": "assistant", "content": reply})
