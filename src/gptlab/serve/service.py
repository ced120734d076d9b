"""What both API dialects share: the served model under its name, the engine that runs it, and
the steps every request takes (check the model name, tokenize the prompt, build the sampling,
fold chat messages into the template). Routes get it with `ServiceDep`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from gptlab.errors import GptlabError
from gptlab.hub import resolve_model
from gptlab.instruct import instruct_sampling
from gptlab.model import GPT
from gptlab.prompts import format_prompt
from gptlab.serve.engine import ApiError, Engine, Job
from gptlab.serve.schemas import Stop
from gptlab.settings import Sampling, ServeLimits
from gptlab.tokenizer import EOT_ID, encode


@dataclass
class Service:
    """One served model: `name` (also answered as `name:latest`), its limits and its engine."""

    model: GPT
    name: str
    limits: ServeLimits
    engine: Engine
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def load(
        cls,
        model: GPT | str | Path,
        name: str | None = None,
        limits: ServeLimits | None = None,
        device: str = "cpu",
    ) -> Service:
        """Serve `model`: a GPT, or anything `gptlab.hub.resolve_model` takes, named after
        its folder unless `name` is given."""
        limits = limits or ServeLimits()
        if not isinstance(model, GPT):
            name = name or Path(str(model)).name
            model, _ = resolve_model(model, device=device)
            model.to(device)
        model.eval()
        if model.cfg.n_classes is not None:
            raise GptlabError("this model is a classifier; only language models can be served")
        engine = Engine(model, limits.max_queue, limits.max_batch)
        return cls(model, name or "gptlab", limits, engine)

    @property
    def context(self) -> int:
        return self.model.cfg.context_length

    def check_model(self, requested: str) -> None:
        if requested not in (self.name, f"{self.name}:latest"):
            raise ApiError(404, f"model {requested!r} not found; this server has {self.name!r}")

    def tokens_of(self, prompt: str) -> list[int]:
        ids = encode(prompt, allow_eot=False)
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
        `max_tokens` means the server's limit."""
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
            stop_ids=(EOT_ID,),
            stop_strings=tuple(text for text in stops if text),
            on_context_full="stop",
        )
        return instruct_sampling(s) if chat else s  # chat also stops at a new "###" section

    async def start(self, prompt: str, s: Sampling) -> tuple[Job, AsyncGenerator[Any, None]]:
        """Queue a generation of `prompt`; its job (for the counters) and its text pieces."""
        run = self.engine.run(self.tokens_of(prompt), s)
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
