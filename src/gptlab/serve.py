"""Serve a gptlab model over Ollama's and OpenAI's REST APIs, so their clients (and gptlab's
own judge) can talk to it.

Ollama:  POST /api/generate, POST /api/chat (NDJSON streaming by default, or one JSON object
         with "stream": false), GET /api/tags, POST /api/show
OpenAI:  POST /v1/chat/completions, POST /v1/completions (SSE streaming with "stream": true),
         GET /v1/models

Chat endpoints fold the messages into the Alpaca instruction template (gptlab.prompts) and stop
where the model starts a new "###" section; the completion endpoints continue the prompt as is.

One worker thread owns the model; the event loop only parses requests and streams text back.
Requests with the same sampling settings are generated together as one left-padded batch (a
request arriving later joins a running batch), and every batch advances one token per turn,
so concurrent streams all make progress. A batch has its own KV cache, shared with no other
batch, and a seeded request always runs alone with its own random generator, so a greedy or
seeded request gets exactly the text it would get alone.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import logging
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from gptlab.errors import GptlabError
from gptlab.generation import Sampling, generate_tokens
from gptlab.hub import resolve_model
from gptlab.instruct import instruct_sampling
from gptlab.model import GPT
from gptlab.prompts import format_prompt
from gptlab.tokenizer import EOT_ID, encode, get_tokenizer

log = logging.getLogger("gptlab")

DEFAULT_PORT = 11434  # Ollama's, so Ollama clients and `gptlab evaluate` find it unchanged


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; anything beyond is refused with a 4xx, never served."""

    max_tokens: int = 1024  # per request, also the default when a request sets no limit
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting or running at once; more get 503
    max_batch: int = 16  # requests generated together in one batch


# ---- the worker that owns the model ----------------------------------------------------------


class TextStream:
    """Token ids in, text out: whole UTF-8 characters only, ending before the first stop string
    and holding back any tail that could be the start of one, so a client never sees part of a
    stop string (or of a character)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(get_tokenizer().decode_single_token_bytes(token))
        cuts = [self.pending.find(s) for s in self.stops if s in self.pending]
        if cuts:
            self.stopped = True
            text, self.pending = self.pending[: min(cuts)], ""
            return text
        hold = max(
            (
                n
                for s in self.stops
                for n in range(len(s) - 1, 0, -1)
                if self.pending.endswith(s[:n])
            ),
            default=0,
        )
        text = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(text) :]
        return text

    def flush(self) -> str:
        text, self.pending = self.pending + self.decoder.decode(b"", final=True), ""
        return text


@dataclass
class Job:
    """One generation request, handed from the event loop to the worker thread and back."""

    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop when the client has gone
    finished: bool = False
    generated: list[int] = field(default_factory=list)
    stopped: bool = False  # ended at <|endoftext|> or a stop string, not at a length limit
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.text = TextStream(self.sampling.stop_strings)

    @property
    def n_generated(self) -> int:
        return len(self.generated)

    @property
    def live(self) -> bool:
        return not (self.finished or self.cancelled)

    def emit(self, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody is listening
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, value))

    def finish(self, error: Exception | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if error is not None:
            self.emit("error", error)
            return
        tail = self.text.flush()
        if tail and not self.text.stopped:
            self.emit("text", tail)
        self.emit("done", None)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a batch. A seeded job never shares: its random
        generator must see only its own draws, to give the same text as when alone."""
        s = self.sampling
        if s.seed is not None:
            return (id(self),)
        return (s.temperature, s.top_k, s.top_p, s.stop_ids, s.stop_strings, s.on_context_full)


class Batch:
    """Jobs generated together as one left-padded batch (`generate_tokens` gives each row what
    it would give alone), under the longest of their token limits; each job ends at its own.

    A job that joins a running batch restarts it: every row is prefilled afresh from its prompt
    plus what it has generated so far, which yields the same next tokens as going on would.
    """

    def __init__(self, model: GPT, jobs: list[Job]) -> None:
        self.model = model
        self.jobs = jobs
        self.key = jobs[0].batch_key()
        longest = max(job.sampling.max_new_tokens - job.n_generated for job in jobs)
        s = dataclasses.replace(jobs[0].sampling, max_new_tokens=longest)
        self.steps = generate_tokens(model, [job.prompt_ids + job.generated for job in jobs], s)

    def can_join(self, jobs: list[Job], max_batch: int) -> bool:
        """Whether `jobs` may restart this batch with them (same sampling, room, and every row
        far enough from the context end that the restart cannot truncate it)."""
        live = [j for j in self.jobs if j.live]
        if jobs[0].batch_key() != self.key or len(live) + len(jobs) > max_batch:
            return False
        limit = self.model.cfg.context_length - 1
        return all(len(j.prompt_ids) + j.n_generated < limit for j in live)

    def joined(self, jobs: list[Job]) -> Batch:
        self.steps.close()
        return Batch(self.model, [j for j in self.jobs if j.live] + jobs)

    def step(self) -> bool:
        """Generate one token for every row and hand out the text; False once all are done."""
        try:
            nxt, active = next(self.steps)
        except StopIteration:  # every row stopped, or the token limit or context was reached
            self.end()
            return False
        except GptlabError as exc:
            self.end(ApiError(400, str(exc)))
            return False
        for row, job in enumerate(self.jobs):
            if not job.live:
                continue
            if job.n_generated >= job.sampling.max_new_tokens:  # its own limit, below the batch's
                job.finish()
                continue
            if not bool(active[row]):
                job.stopped = True
                job.finish()
                continue
            job.generated.append(int(nxt[row]))
            text = job.text.push(job.generated[-1])
            if text:
                job.emit("text", text)
            if job.text.stopped:
                job.stopped = True
                job.finish()
            elif job.n_generated >= job.sampling.max_new_tokens:
                job.finish()
        if not any(job.live for job in self.jobs):
            self.steps.close()
            return False
        return True

    def end(self, error: Exception | None = None) -> None:
        for job in self.jobs:
            job.finish(error)


class Engine:
    """The model plus the one thread allowed to run it. Each turn, the worker takes every
    request that has arrived, adds it to a running batch with the same sampling settings if
    there is room, else groups it with its peers into a new batch of up to `max_batch`, then
    advances every batch by one token: no request waits for another to finish."""

    def __init__(self, model: GPT, max_queue: int, max_batch: int) -> None:
        self.model = model
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._live = 0  # jobs queued or running; touched only on the event loop
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches started, and restarted to take in new requests
        self.joins = 0

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
            job.cancelled = True  # a client that went away stops costing anything
            self._live -= 1

    def _work(self) -> None:
        running: list[Batch] = []
        while True:
            incoming: list[Job | None] = []
            try:  # wait for work only when idle, then take everything that has arrived
                incoming.append(self._inbox.get(block=not running))
                while True:
                    incoming.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if None in incoming:
                for batch in running:
                    batch.end(ApiError(503, "server shutting down"))
                return
            groups: dict[tuple, list[Job]] = {}
            for job in incoming:
                if job is not None:
                    groups.setdefault(job.batch_key(), []).append(job)
            for jobs in groups.values():
                for i in range(0, len(jobs), self.max_batch):
                    running = self._place(running, jobs[i : i + self.max_batch])
            running = [batch for batch in running if self._step(batch)]

    def _place(self, running: list[Batch], jobs: list[Job]) -> list[Batch]:
        for k, batch in enumerate(running):
            if batch.can_join(jobs, self.max_batch):
                running[k] = batch.joined(jobs)
                self.joins += 1
                log.debug("%d requests joined a batch of %d", len(jobs), len(running[k].jobs))
                return running
        self.batches += 1
        log.debug("batch of %d requests started", len(jobs))
        return [*running, Batch(self.model, jobs)]

    @staticmethod
    def _step(batch: Batch) -> bool:
        try:
            return batch.step()
        except Exception as exc:  # a bug: report it to these clients, keep serving the others
            log.exception("generation failed")
            batch.end(exc)
            return False


# ---- request bodies --------------------------------------------------------------------------


class Loose(BaseModel):
    """Clients send many fields gptlab does not use (keep_alive, format, ...): ignore them."""

    model_config = ConfigDict(extra="ignore")


Stop = str | list[str] | None
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class OllamaOptions(Loose):
    temperature: float | None = Field(None, ge=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
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
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
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
    """The web app serving `model` (a GPT, or anything `gptlab.hub.resolve_model` takes)
    under `name`; the worker thread starts and stops with the app's lifespan."""
    limits = limits or ServeLimits()
    if not isinstance(model, GPT):
        name = name or Path(str(model)).name
        model, _ = resolve_model(model, device=device)
        model.to(device)
    model.eval()
    if model.cfg.n_classes is not None:
        raise GptlabError("this model is a classifier; only language models can be served")
    name = name or "gptlab"
    served = {name, f"{name}:latest"}
    context = model.cfg.context_length
    engine = Engine(model, limits.max_queue, limits.max_batch)
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
        chat: bool,
    ) -> Sampling:
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ApiError(
                400, f"max tokens {max_tokens} is over this server's limit of {limits.max_tokens}"
            )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        s = Sampling(
            max_new_tokens=limits.max_tokens if max_tokens is None else max_tokens,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p and top_p < 1 else None,
            seed=seed,
            stop_ids=(EOT_ID,),
            stop_strings=tuple(text for text in stops if text),
            on_context_full="stop",
        )
        return instruct_sampling(s) if chat else s  # chat also stops at a new "###" section

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
            chat,
        )

    def openai_sampling(r: OpenAISampling, max_tokens: int | None, chat: bool) -> Sampling:
        return sampling(
            max_tokens,
            1.0 if r.temperature is None else r.temperature,
            None,
            r.top_p,
            r.seed,
            r.stop,
            chat,
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
