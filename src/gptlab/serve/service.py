"""What both API dialects share: the served model and its tokenizer under its name, the engine
that runs it, and the steps every request takes (check the model name, tokenize the prompt,
build the sampling, put chat messages into the model's chat template, or into Alpaca's for a
model without one). Routes get it with `ServiceDep`."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from gptlab import text
from gptlab.errors import GptlabError
from gptlab.llm import LLM, load
from gptlab.model import Decoder
from gptlab.prompts import format_prompt, own_chat_template
from gptlab.respond import instruct_sampling
from gptlab.serve.engine import ApiError, Engine, Job
from gptlab.serve.schemas import Stop
from gptlab.settings import Sampling, ServeLimits


@dataclass
class Service:
    """One served model: `name` (also answered as `name:latest`), its tokenizer, its limits,
    its engine, the format of the file it came from (for /api/show), and the chat template
    its chat messages go into (None: Alpaca's; see gptlab.prompts.own_chat_template)."""

    model: Decoder
    name: str
    limits: ServeLimits
    engine: Engine
    tokenizer: text.Tokenizer
    format: str = "safetensors"
    chat_template: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def load(
        cls,
        model: Decoder | LLM | str | Path,
        name: str | None = None,
        limits: ServeLimits | None = None,
        device: str = "cpu",
        tokenizer: text.Tokenizer | None = None,
    ) -> Service:
        """Serve `model`: a model object (GPT-2's tokenizer unless `tokenizer` is given), a
        loaded `LLM`, or anything `gptlab.load` takes (loaded on `device`), with its own
        tokenizer unless `tokenizer` is given, named after its file or folder unless `name`
        is given."""
        limits = limits or ServeLimits()
        fmt, meta = "safetensors", {}
        if not isinstance(model, (Decoder, LLM)):
            model = load(model, device=device)
        if isinstance(model, LLM):
            spec = Path(model.spec)
            name = name or spec.name
            fmt = "gguf" if spec.suffix.lower() == ".gguf" else fmt
            meta, tokenizer = model.metadata, tokenizer or model.tokenizer
            model = model.model
        tokenizer = tokenizer if tokenizer is not None else text.gpt2()
        model.eval()
        if model.cfg.n_classes is not None:
            raise GptlabError("this model is a classifier; only language models can be served")
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise GptlabError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{model.cfg.vocab_size}: they do not belong together"
            )
        engine = Engine(model, limits.max_queue, limits.max_batch, tokenizer)
        template = own_chat_template(meta, tokenizer.chat_template)
        return cls(model, name or "gptlab", limits, engine, tokenizer, fmt, template)

    @property
    def context(self) -> int:
        return self.model.cfg.context_length

    @property
    def templated(self) -> bool:
        """Whether chat messages go into the model's own chat template (else Alpaca's)."""
        return self.chat_template is not None

    def check_model(self, requested: str) -> None:
        if requested not in (self.name, f"{self.name}:latest"):
            raise ApiError(404, f"model {requested!r} not found; this server has {self.name!r}")

    def text_ids(self, prompt: str) -> list[int]:
        """A prompt sent as is: the texts of special tokens in it stay plain text."""
        return self._fitting(self.tokenizer.encode(prompt, allow_special=False))

    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Chat turns as prompt ids: rendered whole by the model's chat template (ending with
        the assistant's header) when its tokenizer has one, else folded into Alpaca's."""
        if not self.templated:
            return self.text_ids(messages_to_prompt(messages))
        if not messages:
            raise ApiError(400, "messages: at least one message is required")
        return self._fitting(template_ids(self.tokenizer, messages))

    def _fitting(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ApiError(400, "the prompt is empty")
        if len(ids) >= self.context:
            raise ApiError(
                400, f"the prompt has {len(ids)} tokens; this model's context is {self.context}"
            )
        return ids

    def sampling(
        self,
        max_tokens: int | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Stop,
        chat: bool,
    ) -> Sampling:
        """A request's sampling settings, each dialect's defaults already filled in; None for
        `max_tokens` means the server's limit. Generation stops at the tokenizer's stop ids,
        and a `chat` prompt folded into Alpaca's template also at a new "###" section."""
        limit = self.limits.max_tokens
        if max_tokens is not None and max_tokens > limit:
            raise ApiError(400, f"max tokens {max_tokens} is over this server's limit of {limit}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        s = Sampling(
            max_new_tokens=limit if max_tokens is None else max_tokens,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p and top_p < 1 else None,
            seed=seed,
            stop_ids=tuple(self.tokenizer.stop_ids),
            stop_strings=tuple(piece for piece in stops if piece),
            on_context_full="stop",
        )
        return instruct_sampling(s) if chat and not self.templated else s

    async def start(
        self, prompt_ids: list[int], s: Sampling
    ) -> tuple[Job, AsyncGenerator[Any, None]]:
        """Queue a generation after `prompt_ids`; its job (for the counters) and its text."""
        run = self.engine.run(prompt_ids, s)
        job = await anext(run)
        return job, run


def service_of(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]


async def collect(run: AsyncGenerator[Any, None]) -> str:
    """The whole text of a non-streaming request; the job is released even if the client
    leaves midway."""
    async with contextlib.aclosing(run):
        return "".join([piece async for piece in run])


def done_reason(job: Job) -> str:
    return "stop" if job.stopped else "length"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def messages_to_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """Chat turns in the Alpaca template: system text leads the next user instruction, each
    earlier exchange stays as a completed instruction/response pair, the last user turn is the
    open instruction."""
    if not messages:
        raise ApiError(400, "messages: at least one message is required")
    prompt, system, instruction = "", [], None
    for i, (role, content) in enumerate(messages):
        if role == "system":
            system.append(content)
        elif role == "user":
            if instruction is not None:
                prompt += format_prompt(instruction)
            instruction = "\n\n".join([*system, content])
            system = []
        elif role == "assistant":
            if instruction is None:
                raise ApiError(400, f"messages[{i}]: an assistant turn must follow a user turn")
            prompt += format_prompt(instruction) + content + "\n\n"
            instruction = None
        else:
            raise ApiError(400, f"messages[{i}].role: unsupported role {role!r}")
    if instruction is None:
        raise ApiError(400, "messages: the last message must come from the user")
    return prompt + format_prompt(instruction)


def template_ids(tokenizer: text.Tokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """The ids of `messages` rendered by the tokenizer's chat template (with the generation
    prompt): the template's own special tokens become their ids, but the text of a special
    token inside a message stays text, so a client cannot forge turns. A message holding such
    text is rendered as a one-off marker and encoded on its own, in place of the marker."""
    marker = f"\ue000{secrets.token_hex(8)}:"
    held: dict[str, str] = {}
    chat = []
    for i, (role, content) in enumerate(messages):
        plain = tokenizer.encode(content, allow_special=False, add_bos=False)
        if tokenizer.encode(content, add_bos=False) != plain:
            held[f"{marker}{i}\ue001"] = content
            content = f"{marker}{i}\ue001"
        chat.append({"role": role, "content": content})
    rendered = tokenizer.render_chat(chat, add_generation_prompt=True)
    ids: list[int] = []
    parts = re.split(f"({re.escape(marker)}\\d+\ue001)", rendered) if held else [rendered]
    for k, part in enumerate(parts):
        if k % 2:
            ids += tokenizer.encode(held[part], allow_special=False, add_bos=False)
        elif part:
            ids += tokenizer.encode(part, add_bos=False)
    return ids
