"""OpenAI's API: /v1/chat/completions, /v1/completions (server-sent events with
"stream": true), /v1/models, with OpenAI's sampling defaults and reply fields."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gptlab.serve.engine import ApiError, Job
from gptlab.serve.schemas import OpenAIChat, OpenAICompletion, OpenAISampling
from gptlab.serve.service import Service, ServiceDep, collect, done_reason
from gptlab.settings import Sampling

Kind = Literal["chat", "text"]

router = APIRouter()


def openai_sampling(
    service: Service, r: OpenAISampling, max_tokens: int | None, chat: bool
) -> Sampling:
    return service.sampling(
        max_tokens,
        1.0 if r.temperature is None else r.temperature,
        None,
        r.top_p,
        r.seed,
        r.stop,
        chat,
    )


def choice(
    kind: Kind, stream: bool, text: str, finish: str | None, first: bool = False
) -> dict[str, Any]:
    """One choice: a completion's text, a chat reply's message, or a chat stream's delta (the
    first delta names the role, the last one is empty)."""
    if kind == "text":
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if not stream:
        msg = {"role": "assistant", "content": text}
        return {"index": 0, "message": msg, "finish_reason": finish}
    delta = {"role": "assistant", "content": text} if first else {"content": text}
    return {"index": 0, "delta": delta if text or first else {}, "finish_reason": finish}


def usage(job: Job) -> dict[str, int]:
    n_in, n_out = len(job.prompt_ids), job.n_generated
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


async def events(
    run: AsyncGenerator[Any, None], job: Job, head: dict[str, Any], kind: Kind
) -> AsyncIterator[str]:
    """The server-sent events of a stream: a chunk per text piece, a last chunk with the finish
    reason and usage, then [DONE]; an error midway ends it with an error event."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def event(one: dict[str, Any], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'object': obj, 'choices': [one], **extra})}\n\n"

    first = True
    try:
        async with contextlib.aclosing(run):
            async for piece in run:
                yield event(choice(kind, True, piece, None, first))
                first = False
    except ApiError as exc:
        yield f"data: {json.dumps({'error': {'message': exc.message}})}\n\n"
        return
    yield event(choice(kind, True, "", done_reason(job), first), usage=usage(job))
    yield "data: [DONE]\n\n"


async def openai_reply(
    service: Service, prompt_ids: list[int], s: Sampling, stream: bool, kind: Kind
) -> Any:
    job, run = await service.start(prompt_ids, s)
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    head = {"id": rid, "created": int(time.time()), "model": service.name}
    if stream:
        return StreamingResponse(events(run, job, head, kind), media_type="text/event-stream")
    text = await collect(run)
    obj = "chat.completion" if kind == "chat" else "text_completion"
    choices = [choice(kind, False, text, done_reason(job))]
    return {**head, "object": obj, "choices": choices, "usage": usage(job)}


@router.post("/v1/chat/completions")
async def v1_chat(r: OpenAIChat, service: ServiceDep) -> Any:
    service.check_model(r.model)
    ids = service.chat_ids([(m.role, m.text()) for m in r.messages])
    limit = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
    s = openai_sampling(service, r, limit, chat=True)
    return await openai_reply(service, ids, s, r.stream, "chat")


@router.post("/v1/completions")
async def v1_completions(r: OpenAICompletion, service: ServiceDep) -> Any:
    service.check_model(r.model)
    if isinstance(r.prompt, list) and len(r.prompt) != 1:
        raise ApiError(400, "prompt: send one prompt per request")
    prompt = r.prompt if isinstance(r.prompt, str) else r.prompt[0]
    s = openai_sampling(service, r, r.max_tokens, chat=False)
    return await openai_reply(service, service.text_ids(prompt), s, r.stream, "text")


@router.get("/v1/models")
async def v1_models(service: ServiceDep) -> dict[str, Any]:
    entry = {
        "id": service.name,
        "object": "model",
        "created": service.created,
        "owned_by": "gptlab",
    }
    return {"object": "list", "data": [entry]}
