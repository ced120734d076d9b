"""The web app: both dialects' routes over one shared Service, the error handlers and the
request guard; the engine's worker thread lives as long as the app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from gptlab.families import Model
from gptlab.llm import LLM
from gptlab.serve import ollama, openai
from gptlab.serve.errors import RequestGuard, add_error_handlers
from gptlab.serve.service import Service
from gptlab.settings import ServeLimits
from gptlab.text import Tokenizer


async def root() -> str:
    return "gptlab is running"


def create_app(
    model: Model | LLM | str | Path,
    name: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    tokenizer: Tokenizer | None = None,
) -> FastAPI:
    """The web app serving `model` (a model object, with GPT-2's tokenizer unless `tokenizer`
    is given; a loaded `LLM`, or anything `gptlab.load` takes, with its own) under `name`;
    the worker thread starts and stops with the app's lifespan."""
    service = Service.load(model, name, limits, device, tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    app = FastAPI(title="gptlab", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(RequestGuard, max_bytes=service.limits.max_body_bytes)
    add_error_handlers(app)
    app.add_api_route("/", root, methods=["GET"], response_class=PlainTextResponse)
    app.include_router(ollama.router)
    app.include_router(openai.router)
    return app
