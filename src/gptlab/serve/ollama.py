"""Ollama's API: /api/generate, /api/chat (NDJSON streaming unless "stream": false),
/api/tags, /api/show, with Ollama's sampling defaults and reply fields."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gptlab.model import GPT
from gptlab.prompts import format_prompt
from gptlab.serve.engine import ApiError, Job
from gptlab.serve.schemas import OllamaChat, OllamaGenerate, OllamaOptions, OllamaShow
from gptlab.serve.service import (
    Service,
    ServiceDep,
    collect,
    done_reason,
    messages_to_prompt,
    now_iso,
)
from gptlab.settings import Sampling

router = APIRouter()


def ollama_sampling(service: Service, o: OllamaOptions, chat: bool) -> Sampling:
    # Ollama's defaults; num_predict -1 or -2 means "until the context is full".
    n = None if o.num_predict is None or o.num_predict < 0 else o.num_predict
    return service.sampling(
        n,
        0.8 if o.temperature is None else o.temperature,
        40 if o.top_k is None else o.top_k,
        0.9 if o.top_p is None else o.top_p,
        o.seed,
        o.stop,
        chat,
    )


def ollama_stats(job: Job) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": done_reason(job),
        "total_duration": int((time.perf_counter() - job.started) * 1e9),
        "prompt_eval_count": len(job.prompt_ids),
        "eval_count": job.n_generated,
    }


def model_details(model: GPT) -> dict[str, Any]:
    return {
        "format": "safetensors",
        "family": "gpt2",
        "families": ["gpt2"],
        "parameter_size": f"{model.num_params() / 1e6:.1f}M",
        "quantization_level": "F32",
    }


async def ollama_reply(
    service: Service,
    prompt: str,
    s: Sampling,
    stream: bool,
    wrap: Callable[[str], dict[str, Any]],
) -> Any:
    """One JSON reply, or NDJSON lines of `wrap`ped text pieces and a final line of stats."""
    job, run = await service.start(prompt, s)
    name = service.name
    if not stream:
        text = await collect(run)
        return {"model": name, "created_at": now_iso(), **wrap(text), **ollama_stats(job)}

    async def lines() -> AsyncIterator[str]:
        try:
            async with contextlib.aclosing(run):
                async for piece in run:
                    chunk = {"model": name, "created_at": now_iso(), **wrap(piece)}
                    yield json.dumps({**chunk, "done": False}) + "\n"
        except ApiError as exc:
            yield json.dumps({"error": exc.message}) + "\n"
            return
        final = {"model": name, "created_at": now_iso(), **wrap(""), **ollama_stats(job)}
        yield json.dumps(final) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _response(text: str) -> dict[str, Any]:
    return {"response": text}


def _message(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


@router.post("/api/generate")
async def api_generate(r: OllamaGenerate, service: ServiceDep) -> Any:
    service.check_model(r.model)
    prompt = r.prompt if r.raw or not r.system else f"{r.system}\n\n{r.prompt}"
    s = ollama_sampling(service, r.options, chat=False)
    return await ollama_reply(service, prompt, s, r.stream, _response)


@router.post("/api/chat")
async def api_chat(r: OllamaChat, service: ServiceDep) -> Any:
    service.check_model(r.model)
    prompt = messages_to_prompt([(m.role, m.content) for m in r.messages])
    s = ollama_sampling(service, r.options, chat=True)
    return await ollama_reply(service, prompt, s, r.stream, _message)


@router.get("/api/tags")
async def api_tags(service: ServiceDep) -> dict[str, Any]:
    name, model = service.name, service.model
    entry = {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": datetime.fromtimestamp(service.created, timezone.utc).isoformat(),
        "size": model.num_params() * 4,
        "digest": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
        "details": model_details(model),
    }
    return {"models": [entry]}


@router.post("/api/show")
async def api_show(r: OllamaShow, service: ServiceDep) -> dict[str, Any]:
    service.check_model(r.model or r.name or "")
    model, context = service.model, service.context
    cfg = model.cfg
    return {
        "modelfile": f"# gptlab model {service.name}",
        "parameters": f"num_ctx {context}",
        "template": format_prompt("{{ .Prompt }}"),
        "details": model_details(model),
        "model_info": {
            "general.architecture": "gpt2",
            "general.parameter_count": model.num_params(),
            "gpt2.context_length": context,
            "gpt2.embedding_length": cfg.emb_dim,
            "gpt2.block_count": cfg.n_layers,
            "gpt2.attention.head_count": cfg.n_heads,
        },
        "capabilities": ["completion"],
    }
