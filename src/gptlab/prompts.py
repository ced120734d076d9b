"""The Alpaca instruction template, shared by instruction fine-tuning, `respond`, `chat` and
the server (which applies it to chat messages)."""

from __future__ import annotations

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
RESPONSE_HEADER = "\n\n### Response:\n"
# Generation stops when a model starts a new section on its own.
STOP_STRINGS = ("\n###", "###")


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt up to and including the response header; the model writes what follows."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input_text:
        text += f"\n\n### Input:\n{input_text}"
    return text + RESPONSE_HEADER
