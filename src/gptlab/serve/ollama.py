"""Ollama's API: /api/generate, /api/chat (NDJSON streaming unless "stream": false),
/api/tags, /api/show, with Ollama's sampling defaults and reply fields.

/api/generate applies the model's chat template as Ollama does: the prompt is one user message,
after the request's `system` as a system message when one is given; `raw: true` sends the
prompt as is (and ignores `system`, as Ollama does). A request's own `template` (a Go template
in Ollama) is ignored. A model without a chat template (GPT-2) continues the prompt, with
`system` put before it unless raw.
"""

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

from gptlab.families import family_of
from gptlab.prompts import format_prompt
from gptlab.quantize import footprint, quantization_level
from gptlab.serve.engine import ApiError, Job
from gptlab.serve.schemas import OllamaChat, OllamaGenerate, OllamaOptions, OllamaShow
from gptlab.serve.service import (
    Service,
    ServiceDep,
    collect,
    done_reason,
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


def model_details(service: Service) -> dict[str, Any]:
    """The served model as Ollama describes one, its weights as they are held (F32, BF16, F16,
    or gptlab's quantized int8 / int4 layers: gptlab.quantize.quantization_level)."""
    family = family_of(service.model.cfg)
    return {
        "format": service.format,
        "family": family,
        "families": [family],
        "parameter_size": f"{footprint(service.model)[0] / 1e6:.1f}M",
        "quantization_level": quantization_level(service.model),
    }


def architecture(service: Service) -> str:
    """The name GGUF files give the architecture: gpt2, llama, qwen2 (q/k/v biases) or qwen3
    (q/k norms)."""
    cfg = service.model.cfg
    family = family_of(cfg)
    if family == "llama" and cfg.qk_norm:
        return "qwen3"
    return "qwen2" if family == "llama" and cfg.qkv_bias else family


async def ollama_reply(
    service: Service,
    prompt_ids: list[int],
    s: Sampling,
    stream: bool,
    wrap: Callable[[str], dict[str, Any]],
) -> Any:
    """One JSON reply, or NDJSON lines of `wrap`ped text pieces and a final line of stats."""
    job, run = await service.start(prompt_ids, s)
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
    s = ollama_sampling(service, r.options, chat=False)
    if r.raw or not service.templated:
        ids = service.text_ids(r.prompt if r.raw or not r.system else f"{r.system}\n\n{r.prompt}")
    elif not r.prompt:
        raise ApiError(400, "the prompt is empty")
    else:
        ids = service.chat_ids([*([("system", r.system)] if r.system else []), ("user", r.prompt)])
    return await ollama_reply(service, ids, s, r.stream, _response)


@router.post("/api/chat")
async def api_chat(r: OllamaChat, service: ServiceDep) -> Any:
    service.check_model(r.model)
    ids = service.chat_ids([(m.role, m.content) for m in r.messages])
    s = ollama_sampling(service, r.options, chat=True)
    return await ollama_reply(service, ids, s, r.stream, _message)


@router.get("/api/tags")
async def api_tags(service: ServiceDep) -> dict[str, Any]:
    name, model = service.name, service.model
    entry = {
        "name": f"{name}:latest",
        "model": f"{name}:latest",
        "modified_at": datetime.fromtimestamp(service.created, timezone.utc).isoformat(),
        "size": footprint(model)[1],  # bytes in memory, as loaded
        "digest": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
        "details": model_details(service),
    }
    return {"models": [entry]}


@router.post("/api/show")
async def api_show(r: OllamaShow, service: ServiceDep) -> dict[str, Any]:
    service.check_model(r.model or r.name or "")
    model, context, arch = service.model, service.context, architecture(service)
    cfg = model.cfg
    template = service.chat_template or format_prompt("{{ .Prompt }}")
    return {
        "modelfile": f"# gptlab model {service.name}",
        "parameters": f"num_ctx {context}",
        "template": template,
        "details": model_details(service),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": footprint(model)[0],
            f"{arch}.context_length": context,
            f"{arch}.embedding_length": cfg.emb_dim,
            f"{arch}.block_count": cfg.n_layers,
            f"{arch}.attention.head_count": cfg.n_heads,
            **({} if arch == "gpt2" else {f"{arch}.attention.head_count_kv": cfg.n_kv_heads}),
        },
        "capabilities": ["completion"],
    }
