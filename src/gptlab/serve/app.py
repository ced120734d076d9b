"""The web app: both dialects' routes over one shared Service, the error handlers and the
request guard; the engine's worker thread lives as long as the app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from gptlab.llm import LLM
from gptlab.model import Decoder
from gptlab.serve import ollama, openai, web
from gptlab.serve.errors import RequestGuard, add_error_handlers
from gptlab.serve.service import Service
from gptlab.settings import ServeLimits
from gptlab.text import Tokenizer


def create_app(
    model: Decoder | LLM | str | Path | None,
    name: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    tokenizer: Tokenizer | None = None,
    runs: Path | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The web app serving `model` (a model object, with GPT-2's tokenizer unless `tokenizer`
    is given; a loaded `LLM`, or anything `gptlab.load` takes, with its own) under `name`;
    the worker thread starts and stops with the app's lifespan. The web page, the runs browser
    of `runs` and the `api_key` check: gptlab.serve.web. No `model`: the runs browser alone."""
    service = None if model is None else Service.load(model, name, limits, device, tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            service.engine.start()
        try:
            yield
        finally:
            if service is not None:
                service.engine.stop()

    app = FastAPI(title="gptlab", lifespan=lifespan)
    app.state.service = service
    max_bytes = (service.limits if service else limits or ServeLimits()).max_body_bytes
    app.add_middleware(RequestGuard, max_bytes=max_bytes)
    add_error_handlers(app)
    web.mount(app, runs, api_key)
    if service is not None:
        app.include_router(ollama.router)
        app.include_router(openai.router)
    return app
