"""Serve a gptlab model over Ollama's and OpenAI's REST APIs, so their clients (and gptlab's
own judge) can talk to it.

Ollama:  POST /api/generate, POST /api/chat (NDJSON streaming by default, or one JSON object
         with "stream": false), GET /api/tags, POST /api/show
OpenAI:  POST /v1/chat/completions, POST /v1/completions (SSE streaming with "stream": true),
         GET /v1/models

Chat endpoints fold the messages into the Alpaca instruction template (gptlab.prompts) and stop
where the model starts a new "###" section; the completion endpoints continue the prompt as is.

One worker thread owns the model. Requests queue to it and it advances every live request by
one text piece in turn, so concurrent streams all make progress; each request runs its own
`generate_tokens` (its own KV cache and its own seeded random generator), so requests never
see each other's state and a seeded or greedy request gives the same text alone or in a crowd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from gptlab.checkpoints import load_model
from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, Sampling, generate_tokens
from gptlab.model import GPT
from gptlab.prompts import STOP_STRINGS, format_prompt
from gptlab.tokenizer import EOT_ID, encode, stream_decode

log = logging.getLogger("gptlab")

DEFAULT_PORT = 11434  # Ollama's, so Ollama clients and `gptlab evaluate` find it unchanged


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; anything beyond is refused with a 4xx, never served."""

    max_tokens: int = 1024  # per request, also the default when a request sets no limit
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting or running at once; more get 503


# ---- the worker that owns the model ----------------------------------------------------------


@dataclass
class Job:
    """One generation request, handed from the event loop to the worker thread and back."""

    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    n_generated: int = 0
    stopped: bool = False  # ended at <|endoftext|> or a stop string, not at a length limit
    started: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody is listening
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, value))


def until_stop(
    pieces: Iterable[str], stops: Sequence[str], on_stop: Callable[[], None]
) -> Iterator[str]:
    """Pass streamed text through up to the first stop string (excluded), holding back any tail
    that could be the start of one, so a client never sees part of a stop string."""
    pending = ""
    for piece in pieces:
        pending += piece
        cuts = [pending.find(s) for s in stops if s in pending]
        if cuts:
            if min(cuts) > 0:
                yield pending[: min(cuts)]
            on_stop()
            return
        hold = max(
            (n for s in stops for n in range(len(s) - 1, 0, -1) if pending.endswith(s[:n])),
            default=0,
        )
        if len(pending) > hold:
            yield pending[: len(pending) - hold]
            pending = pending[len(pending) - hold :]
    if pending:
        yield pending


class Engine:
    """The model plus the one thread allowed to run it."""

    def __init__(self, model: GPT, max_queue: int) -> None:
        self.model = model
        self.max_queue = max_queue
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._live = 0  # jobs queued or running; touched only on the event loop
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="gptlab-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def run(
        self, prompt_ids: list[int], sampling: Sampling
    ) -> AsyncGenerator[Job | str, None]:
        """Yield the job first (for its counters), then its text pieces as they are made."""
        if self._live >= self.max_queue:
            raise ApiError(503, f"server busy: {self._live} requests in progress; retry later")
        job = Job(prompt_ids, sampling, asyncio.get_running_loop())
        self._live += 1
        self._inbox.put(job)
        try:
            yield job
            while True:
                kind, value = await job.out.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            job.cancelled = True  # a client that went away frees the worker at its next step
            self._live -= 1

    def _work(self) -> None:
        running: list[tuple[Job, Iterator[str]]] = []
        while True:
            incoming: list[Job | None] = []
            try:  # wait for work only when idle, then take everything that has arrived
                incoming.append(self._inbox.get(block=not running))
                while True:
                    incoming.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if None in incoming:
                for job, _ in running:
                    job.emit("error", ApiError(503, "server shutting down"))
                return
            running += [(job, self._pieces(job)) for job in incoming if job is not None]
            for entry in list(running):
                job, pieces = entry
                if not job.cancelled and self._step(job, pieces):
                    continue
                running.remove(entry)

    def _step(self, job: Job, pieces: Iterator[str]) -> bool:
        """Advance one job by one text piece; False once it is finished."""
        try:
            job.emit("text", next(pieces))
            return True
        except StopIteration:
            job.emit("done", None)
        except GptlabError as exc:
            job.emit("error", ApiError(400, str(exc)))
        except Exception as exc:  # a bug: report it to this client, keep serving the others
            log.exception("generation failed")
            job.emit("error", exc)
        return False

    def _pieces(self, job: Job) -> Iterator[str]:
        def ids() -> Iterator[int]:
            stats = GenerationStats()
            with torch.inference_mode():
                for nxt, active in generate_tokens(
                    self.model, [job.prompt_ids], job.sampling, stats=stats
                ):
                    if not bool(active[0]):
                        job.stopped = True
                        return
                    job.n_generated += 1
                    yield int(nxt[0])

        def stopped() -> None:
            job.stopped = True

        return until_stop(stream_decode(ids()), job.sampling.stop_strings, stopped)


# ---- request bodies --------------------------------------------------------------------------


class Loose(BaseModel):
    """Clients send many fields gptlab does not use (keep_alive, format, ...): ignore them."""

    model_config = ConfigDict(extra="ignore")


Stop = str | list[str] | None


class OllamaOptions(Loose):
    temperature: float | None = Field(None, ge=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    num_predict: int | None = Field(None, ge=-2)  # -1: until the context is full, as in Ollama
    stop: Stop = None


class OllamaMessage(Loose):
    role: str
    content: str = ""


class OllamaGenerate(Loose):
    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)


class OllamaChat(Loose):
    model: str
    messages: list[OllamaMessage]
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)


class OllamaShow(Loose):
    model: str | None = None
    name: str | None = None  # older clients


class TextPart(Loose):
    type: Literal["text"]
    text: str


class OpenAIMessage(Loose):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class OpenAISampling(Loose):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: Stop = None
    n: int = Field(1, ge=1, le=1)  # one choice per request
    stream: bool = False


class OpenAIChat(OpenAISampling):
    messages: list[OpenAIMessage]
    max_completion_tokens: int | None = Field(None, ge=0)


class OpenAICompletion(OpenAISampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions


# ---- errors ------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses, with the status code and one-line reason to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(request: Request, status: int, message: str) -> JSONResponse:
    """Each API's own error shape, so its clients raise their usual exception types."""
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {
            "error": {"message": message, "type": "invalid_request_error", "code": status}
        }
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status)


def validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid')}"


class RequestGuard:
    """Refuse request bodies over `max_bytes` (413), counting what arrives rather than trusting
    Content-Length, and read every body as JSON whatever its declared type (as Ollama does, so
    `curl -d '{...}'` works)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        others = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
        scope = {**scope, "headers": [*others, (b"content-type", b"application/json")]}
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, f"request body over the {self.max_bytes}-byte limit")
            return message

        await self.app(scope, limited, send)


# ---- the app -----------------------------------------------------------------------------


async def collect(run: AsyncGenerator[Any, None]) -> str:
    """The whole text of a non-streaming request; the job is released even if the client
    leaves midway."""
    async with contextlib.aclosing(run):
        return "".join([piece async for piece in run])


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


def create_app(
    model: GPT | str | Path,
    name: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
) -> FastAPI:
    """The web app serving `model` (a GPT, or anything `gptlab.checkpoints.load_model` takes)
    under `name`; the worker thread starts and stops with the app's lifespan."""
    limits = limits or ServeLimits()
    if not isinstance(model, GPT):
        name = name or Path(str(model)).name
        model, _ = load_model(model, device=device)
        model.to(device)
    model.eval()
    if model.cfg.n_classes is not None:
        raise GptlabError("this model is a classifier; only language models can be served")
    name = name or "gptlab"
    served = {name, f"{name}:latest"}
    context = model.cfg.context_length
    engine = Engine(model, limits.max_queue)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="gptlab", lifespan=lifespan)
    app.add_middleware(RequestGuard, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.message)

    @app.exception_handler(GptlabError)
    async def _user_error(request: Request, exc: GptlabError) -> JSONResponse:
        return error_response(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 400, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail))

    def check_model(requested: str) -> None:
        if requested not in served:
            raise ApiError(404, f"model {requested!r} not found; this server has {name!r}")

    def tokens_of(prompt: str) -> list[int]:
        ids = encode(prompt, allow_eot=False)
        if not ids:
            raise ApiError(400, "the prompt is empty")
        if len(ids) >= context:
            raise ApiError(
                400, f"the prompt has {len(ids)} tokens; this model's context is {context}"
            )
        return ids

    def sampling(
        max_tokens: int | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop: Stop,
        template_stops: tuple[str, ...],
    ) -> Sampling:
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(
                400, f"max tokens {max_tokens} is over this server's limit of {limits.max_tokens}"
            )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return Sampling(
            max_new_tokens=limits.max_tokens if max_tokens is None else max_tokens,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p and top_p < 1 else None,
            seed=seed,
            stop_ids=(EOT_ID,),
            stop_strings=(*template_stops, *(s for s in stops if s)),
            on_context_full="stop",
        )

    def ollama_sampling(o: OllamaOptions, chat: bool) -> Sampling:
        # Ollama's defaults; num_predict -1 or -2 means "until the context is full".
        n = None if o.num_predict is None or o.num_predict < 0 else o.num_predict
        return sampling(
            n,
            0.8 if o.temperature is None else o.temperature,
            40 if o.top_k is None else o.top_k,
            0.9 if o.top_p is None else o.top_p,
            o.seed,
            o.stop,
            STOP_STRINGS if chat else (),
        )

    def openai_sampling(r: OpenAISampling, max_tokens: int | None, chat: bool) -> Sampling:
        return sampling(
            max_tokens,
            1.0 if r.temperature is None else r.temperature,
            None,
            r.top_p,
            r.seed,
            r.stop,
            STOP_STRINGS if chat else (),
        )

    def done_reason(job: Job) -> str:
        return "stop" if job.stopped else "length"

    def ollama_stats(job: Job) -> dict[str, Any]:
        return {
            "done": True,
            "done_reason": done_reason(job),
            "total_duration": int((time.perf_counter() - job.started) * 1e9),
            "prompt_eval_count": len(job.prompt_ids),
            "eval_count": job.n_generated,
        }

    async def ollama_reply(
        prompt: str, s: Sampling, stream: bool, wrap: Callable[[str], dict[str, Any]]
    ) -> Any:
        run = engine.run(tokens_of(prompt), s)
        job = await anext(run)
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

    @app.get("/", response_class=PlainTextResponse)
    async def root() -> str:
        return "gptlab is running"

    @app.post("/api/generate")
    async def api_generate(r: OllamaGenerate) -> Any:
        check_model(r.model)
        prompt = r.prompt if r.raw or not r.system else f"{r.system}\n\n{r.prompt}"
        s = ollama_sampling(r.options, chat=False)
        return await ollama_reply(prompt, s, r.stream, lambda text: {"response": text})

    @app.post("/api/chat")
    async def api_chat(r: OllamaChat) -> Any:
        check_model(r.model)
        prompt = messages_to_prompt([(m.role, m.content) for m in r.messages])
        s = ollama_sampling(r.options, chat=True)

        def wrap(text: str) -> dict[str, Any]:
            return {"message": {"role": "assistant", "content": text}}

        return await ollama_reply(prompt, s, r.stream, wrap)

    details = {
        "format": "safetensors",
        "family": "gpt2",
        "families": ["gpt2"],
        "parameter_size": f"{model.num_params() / 1e6:.1f}M",
        "quantization_level": "F32",
    }

    @app.get("/api/tags")
    async def api_tags() -> dict[str, Any]:
        entry = {
            "name": f"{name}:latest",
            "model": f"{name}:latest",
            "modified_at": datetime.fromtimestamp(created, timezone.utc).isoformat(),
            "size": model.num_params() * 4,
            "digest": uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
            "details": details,
        }
        return {"models": [entry]}

    @app.post("/api/show")
    async def api_show(r: OllamaShow) -> dict[str, Any]:
        check_model(r.model or r.name or "")
        cfg = model.cfg
        return {
            "modelfile": f"# gptlab model {name}",
            "parameters": f"num_ctx {context}",
            "template": format_prompt("{{ .Prompt }}"),
            "details": details,
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

    async def openai_reply(
        prompt: str, s: Sampling, stream: bool, kind: Literal["chat", "text"]
    ) -> Any:
        run = engine.run(tokens_of(prompt), s)
        job = await anext(run)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if kind == "chat" else "text_completion"
        head = {"id": rid, "created": int(time.time()), "model": name}

        def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            if kind == "text":
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            if not stream:
                msg = {"role": "assistant", "content": text}
                return {"index": 0, "message": msg, "finish_reason": finish}
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": 0, "delta": delta if text or first else {}, "finish_reason": finish}

        def usage() -> dict[str, int]:
            n_in, n_out = len(job.prompt_ids), job.n_generated
            return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

        if not stream:
            text = await collect(run)
            choices = [choice(text, done_reason(job))]
            return {**head, "object": obj, "choices": choices, "usage": usage()}

        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {**head, "object": chunk_obj, "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            first = True
            try:
                async with contextlib.aclosing(run):
                    async for piece in run:
                        yield event([choice(piece, None, first)])
                        first = False
            except ApiError as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message}})}\n\n"
                return
            yield event([choice("", done_reason(job), first)], usage=usage())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def v1_chat(r: OpenAIChat) -> Any:
        check_model(r.model)
        prompt = messages_to_prompt([(m.role, m.text()) for m in r.messages])
        limit = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        return await openai_reply(prompt, openai_sampling(r, limit, chat=True), r.stream, "chat")

    @app.post("/v1/completions")
    async def v1_completions(r: OpenAICompletion) -> Any:
        check_model(r.model)
        if isinstance(r.prompt, list) and len(r.prompt) != 1:
            raise ApiError(400, "prompt: send one prompt per request")
        prompt = r.prompt if isinstance(r.prompt, str) else r.prompt[0]
        s = openai_sampling(r, r.max_tokens, chat=False)
        return await openai_reply(prompt, s, r.stream, "text")

    @app.get("/v1/models")
    async def v1_models() -> dict[str, Any]:
        entry = {"id": name, "object": "model", "created": created, "owned_by": "gptlab"}
        return {"object": "list", "data": [entry]}

    return app


def bind(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so port 0 (any free port) can be reported to the user."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GptlabError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def run_server(
    model_spec: GPT | str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    name: str | None = None,
    limits: ServeLimits | None = None,
    device: str = "cpu",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; uvicorn then stops accepting, lets running requests
    finish for a few seconds, and the worker thread is joined."""
    import uvicorn

    app = create_app(model_spec, name=name, limits=limits, device=device)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal for the handler that
    # was there before it; this one makes that a normal exit (status 0), not a kill.
    previous = signal.signal(signal.SIGTERM, lambda *_: log.info("stopped on SIGTERM"))
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
