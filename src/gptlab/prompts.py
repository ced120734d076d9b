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


def tuned_in_alpaca(meta: dict[str, object]) -> bool:
    """Whether a model (its config.json's metadata) was fine-tuned in the Alpaca template, so
    that `chat`, the server and a GGUF export prompt it that way even when its tokenizer has
    a chat template. Instruction fine-tuning records its format as "template"; a checkpoint
    without that key that is a LoRA language model comes from instruction fine-tuning too (the
    only job that trains those), which was Alpaca-only before formats were recorded."""
    template = meta.get("template")
    if template is not None:
        return template == "alpaca"
    return bool(meta.get("lora")) and meta.get("task") == "lm"


def own_chat_template(meta: dict[str, object], template: str | None) -> str | None:
    """The chat template to prompt a model in: its tokenizer's `template`, or None (the Alpaca
    prompt) when it has none or gptlab fine-tuned the model in Alpaca's (`tuned_in_alpaca`)."""
    return None if tuned_in_alpaca(meta) else template


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# The Alpaca template as a Jinja chat template (for files that carry one, such as a GGUF
# export), turning messages into the prompt exactly as gptlab's server does: system text leads
# the next user instruction (joined by a blank line), each earlier exchange is a completed
# instruction/response pair followed by a blank line, the last user turn is the open
# instruction.
ALPACA_CHAT_TEMPLATE = (
    "{%- macro alpaca(instruction) -%}"
    "{{ "
    + _jinja_string(f"{PREAMBLE}\n\n### Instruction:\n")
    + " + instruction + "
    + _jinja_string(RESPONSE_HEADER)
    + " }}"
    "{%- endmacro -%}"
    "{%- set ns = namespace(system='', instruction=none) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + message['content'] + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if ns.instruction is not none -%}{{ alpaca(ns.instruction) }}{%- endif -%}"
    "{%- set ns.instruction = ns.system + message['content'] -%}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if ns.instruction is none -%}"
    "{{ raise_exception('an assistant turn must follow a user turn') }}"
    "{%- endif -%}"
    "{{ alpaca(ns.instruction) + message['content'] + '\\n\\n' }}"
    "{%- set ns.instruction = none -%}"
    "{%- else -%}"
    "{{ raise_exception('unsupported role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and ns.instruction is not none -%}"
    "{{ alpaca(ns.instruction) }}"
    "{%- endif -%}"
)
