"""The worker that owns the model: requests in, text pieces out, generated in batches (see
gptlab.serve). It knows nothing of HTTP beyond the status code its refusals carry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from gptlab.errors import GptlabError
from gptlab.generation import TextStream, generate_tokens
from gptlab.model import Decoder
from gptlab.settings import Sampling
from gptlab.text import Tokenizer

log = logging.getLogger("gptlab")


class ApiError(Exception):
    """A request the server refuses, with the status code and one-line reason to send. Defined
    here, below the web layer, because the engine itself refuses (busy, shutting down)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """One generation request, handed from the event loop to the worker thread and back; its
    text is decoded by `tokenizer` (None: GPT-2's)."""

    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    tokenizer: Tokenizer | None = None
    out: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop when the client has gone
    finished: bool = False
    generated: list[int] = field(default_factory=list)
    stopped: bool = False  # ended at a stop id or a stop string, not at a length limit
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.text = TextStream(self.sampling.stop_strings, self.tokenizer)

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
        if tail:
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
    it would give alone; the padding is masked, so its id is no token of any vocabulary's),
    under the longest of their token limits; each job ends at its own.

    A job that joins a running batch restarts it: every row is prefilled afresh from its prompt
    plus what it has generated so far, which yields the same next tokens as going on would.
    """

    def __init__(self, model: Decoder, jobs: list[Job], tokenizer: Tokenizer | None = None) -> None:
        self.model = model
        self.jobs = jobs
        self.tokenizer = tokenizer
        self.key = jobs[0].batch_key()
        longest = max(job.sampling.max_new_tokens - job.n_generated for job in jobs)
        s = dataclasses.replace(jobs[0].sampling, max_new_tokens=longest)
        prompts = [job.prompt_ids + job.generated for job in jobs]
        self.steps = generate_tokens(model, prompts, s, tokenizer=tokenizer)

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
        return Batch(self.model, [j for j in self.jobs if j.live] + jobs, self.tokenizer)

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
    advances every batch by one token: no request waits for another to finish. Ids are the
    model's `tokenizer`'s (None: GPT-2's), which decodes the text and the stop strings."""

    def __init__(
        self, model: Decoder, max_queue: int, max_batch: int, tokenizer: Tokenizer | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._live = 0  # jobs queued or running; touched only on the event loop
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches started, and restarted to take in new requests
        self.joins = 0
        self.dropped = 0  # requests whose client left before the end, dropped by the worker

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
        job = Job(prompt_ids, sampling, asyncio.get_running_loop(), self.tokenizer)
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
        return [*running, Batch(self.model, jobs, self.tokenizer)]

    def _step(self, batch: Batch) -> bool:
        try:
            going = batch.step()
        except Exception as exc:  # a bug: report it to these clients, keep serving the others
            log.exception("generation failed")
            batch.end(exc)
            return False
        self._drop_cancelled(batch)
        return going

    def _drop_cancelled(self, batch: Batch) -> None:
        """Count and log the requests whose client has gone (a closed stream, a page's stop
        button): `Batch.step` generates nothing more for them from this turn on."""
        for job in batch.jobs:
            if job.cancelled and not job.finished:
                job.finished = True
                self.dropped += 1
                n, limit = job.n_generated, job.sampling.max_new_tokens
                log.info("request cancelled by its client after %d of %d tokens", n, limit)
