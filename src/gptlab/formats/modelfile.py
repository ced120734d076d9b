"""An Ollama Modelfile for an exported GGUF file, named after it (`NAME.Modelfile` beside
`NAME.gguf`, so that two exports into one folder keep one each): `ollama create NAME -f
NAME.Modelfile`.

Ollama does not run a model's Jinja chat template; its TEMPLATE is a Go text/template over
`.Messages` (each with `.Role` and `.Content`; Ollama puts the Modelfile's SYSTEM first when a
conversation has no system message). So the Jinja template is recognised by what it renders,
not by its text: it is rendered for a few probe conversations and compared with each chat
format gptlab can translate (`FORMATS`: ChatML as SmolLM2 and Qwen3 use it, Llama 3's header
format, gptlab's Alpaca), each given here as its Ollama template plus what that template
renders, in Python. The first format that renders every probe the same becomes TEMPLATE; a
system prompt that the Jinja template adds on its own (SmolLM2's) becomes SYSTEM. A leading
bos token in the Jinja rendering is left to the tokenizer, which adds it (add_bos_token), as
Ollama does. A template that matches none is not translated: the Modelfile then has no TEMPLATE
(Ollama falls back to its own detection from the GGUF's tokenizer.chat_template) and says so.
Stop PARAMETERs are the texts of the tokenizer's stop tokens, plus Alpaca's "###" section
marker for that format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from gptlab.errors import GptlabError
from gptlab.prompts import PREAMBLE, RESPONSE_HEADER, STOP_STRINGS
from gptlab.text import Tokenizer, render_chat

Messages = Sequence[dict[str, str]]
MODELFILE = ".Modelfile"  # the suffix that replaces the GGUF file's .gguf
# Ollama's default context (2048) can be short of a model's; more than this costs memory.
MAX_NUM_CTX = 8192


class ChatFormat(NamedTuple):
    name: str
    template: str  # Ollama's TEMPLATE (Go text/template)
    render: Callable[[Messages], str]  # what `template` renders for a conversation
    stops: tuple[str, ...] = ()


def _chatml(messages: Messages) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _llama3(messages: Messages) -> str:
    turns = "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
        for m in messages
    )
    return turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _alpaca(messages: Messages) -> str:
    head = f"{PREAMBLE}\n\n### Instruction:\n"
    out, system, instruction = "", "", None
    for m in messages:
        if m["role"] == "system":
            system += m["content"] + "\n\n"
        elif m["role"] == "user":
            if instruction is not None:
                out += head + instruction + RESPONSE_HEADER
            instruction, system = system + m["content"], ""
        else:
            out += head + (instruction or "") + RESPONSE_HEADER + m["content"] + "\n\n"
            instruction = None
    return out + (head + instruction + RESPONSE_HEADER if instruction is not None else "")


CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3_TEMPLATE = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
_HEAD = f"{PREAMBLE}\n\n### Instruction:\n"
ALPACA_TEMPLATE = (
    '{{- $system := "" }}{{- $instruction := "" }}{{- $open := false }}\n'
    "{{- range .Messages }}\n"
    '{{- if eq .Role "system" }}{{ $system = printf "%s%s\\n\\n" $system .Content }}\n'
    '{{- else if eq .Role "user" }}\n'
    "{{- if $open }}" + _HEAD + "{{ $instruction }}" + RESPONSE_HEADER + "{{ end }}\n"
    '{{- $instruction = printf "%s%s" $system .Content }}{{ $system = "" }}'
    "{{ $open = true }}\n"
    "{{- else }}" + _HEAD + "{{ $instruction }}" + RESPONSE_HEADER + "{{ .Content }}\n\n"
    "{{ $open = false }}\n"
    "{{- end }}\n"
    "{{- end }}\n"
    "{{- if $open }}" + _HEAD + "{{ $instruction }}" + RESPONSE_HEADER + "{{ end }}"
)
FORMATS = (
    ChatFormat("chatml", CHATML_TEMPLATE, _chatml),
    ChatFormat("llama3", LLAMA3_TEMPLATE, _llama3),
    ChatFormat("alpaca", ALPACA_TEMPLATE, _alpaca, STOP_STRINGS),
)

PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "Hello there."},),
    ({"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hi?"}),
    (
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one."},
    ),
    (
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ),
)
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", re.DOTALL)


def _jinja(tokenizer: Tokenizer, template: str, messages: Messages) -> str:
    text = render_chat(template, messages, True, **tokenizer.special_tokens)
    bos = tokenizer.special_tokens.get("bos_token")
    if tokenizer.add_bos and bos and text.startswith(bos):  # the tokenizer adds it
        text = text[len(bos) :]
    return text


def match_format(tokenizer: Tokenizer, template: str) -> tuple[ChatFormat, str | None] | None:
    """The known format that renders every probe conversation as the Jinja `template` does,
    and the system prompt the template adds when a conversation has none (else None); None
    when no format matches."""
    first = _jinja(tokenizer, template, PROBES[0])
    found = _DEFAULT_SYSTEM.match(first)
    for default in ([found.group(1)] if found else []) + [None]:
        for fmt in FORMATS:
            same = True
            for probe in PROBES:
                messages = list(probe)
                if default is not None and messages[0]["role"] != "system":
                    messages.insert(0, {"role": "system", "content": default})
                if fmt.render(messages) != _jinja(tokenizer, template, probe):
                    same = False
                    break
            if same:
                return fmt, default
    return None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise GptlabError('a Modelfile value cannot hold """')
    return f'"""{text}"""'


def modelfile_text(
    gguf_name: str, tokenizer: Tokenizer, template: str | None, context_length: int
) -> tuple[str, str | None]:
    """The Modelfile for the GGUF file `gguf_name` (in the same folder) and a note for the user
    when its chat template could not be translated (else None)."""
    modelfile = Path(gguf_name).with_suffix(MODELFILE).name
    lines = [f"# Ollama Modelfile for {gguf_name}, written by gptlab convert"]
    lines += [f"# ollama create NAME -f {modelfile} && ollama run NAME", f"FROM ./{gguf_name}"]
    note, stops = None, [tokenizer.decode([i]) for i in tokenizer.stop_ids]
    if template is not None:
        found = match_format(tokenizer, template)
        if found is None:
            note = (
                "the chat template is none of those gptlab translates for Ollama (ChatML, "
                "Llama 3, Alpaca): the Modelfile has no TEMPLATE, so Ollama picks one from the "
                "GGUF's own chat template"
            )
            lines.append(f"# {note}")
        else:
            fmt, default = found
            lines.insert(1, f"# chat format: {fmt.name}")
            lines.append(f"TEMPLATE {_quoted(fmt.template)}")
            if default is not None:
                lines.append(f"SYSTEM {_quoted(default)}")
            stops += fmt.stops
    for stop in dict.fromkeys(stops):
        if '"' not in stop and "\n" not in stop:  # "\n###" is covered by "###"
            lines.append(f'PARAMETER stop "{stop}"')
    lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n", note


def write_modelfile(
    gguf_path: Path, tokenizer: Tokenizer, template: str | None, context_length: int
) -> tuple[Path, str | None]:
    """Write NAME.Modelfile beside NAME.gguf; returns its path and the note of
    `modelfile_text`."""
    from gptlab.io import atomic_write_text

    text, note = modelfile_text(gguf_path.name, tokenizer, template, context_length)
    path = gguf_path.with_suffix(MODELFILE)
    atomic_write_text(path, text)
    return path, note
