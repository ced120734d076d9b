"""The server, end to end: a real `gptlab serve` subprocess on a loopback port, talked to with
the official ollama and openai clients and with raw HTTP; garbage and seeded fuzzing go to the
same app in process (FastAPI's TestClient runs the real app, worker thread included)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import hypothesis
import ollama
import openai
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error

from gptlab.generation import TextStream, generate_text
from gptlab.hub import resolve_model
from gptlab.model import GPT
from gptlab.prompts import STOP_STRINGS, format_prompt
from gptlab.serve.app import create_app
from gptlab.serve.engine import ApiError, Engine, Job
from gptlab.serve.service import messages_to_prompt
from gptlab.settings import Sampling, ServeLimits
from gptlab.tokenizer import encode
from tests.serve_process import save_tiny_model, served

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serve") / "tiny")


SERVER_LOG: list[str] = []  # the output lines of the `server` fixture's process


@pytest.fixture(scope="module")
def server(model_dir: Path) -> str:
    limits = ("--max-tokens", str(MAX_TOKENS), "--max-body-bytes", "65536")
    with served(model_dir, *limits, log=SERVER_LOG) as (url, _):
        yield url


def greedy(n: int) -> dict:
    return {"temperature": 0, "num_predict": n}


# ---- pure helpers ----------------------------------------------------------------------------


def test_text_stream_never_shows_part_of_a_stop_string_or_a_character() -> None:
    def pieces(text: str, stops: tuple[str, ...]) -> tuple[list[str], TextStream]:
        stream = TextStream(stops)
        out = [stream.push(t) for t in encode(text)]
        return [*out, "" if stream.stopped else stream.flush()], stream

    out, stream = pieces("Hello world\n### Next part", STOP_STRINGS)
    assert "".join(out) == "Hello world" and stream.stopped
    assert all("#" not in piece for piece in out)  # the held-back "\n#" was never sent
    # A held-back tail that turns out not to start a stop string is released.
    out, stream = pieces("a\n#b c", STOP_STRINGS)
    assert "".join(out) == "a\n#b c" and not stream.stopped
    # Characters split over several byte-level tokens come out whole.
    out, _ = pieces("naïve 日本語 🙂", ())
    assert "".join(out) == "naïve 日本語 🙂" and "\ufffd" not in "".join(out)
    assert "" in out  # some tokens carried only part of a character


def test_messages_fold_into_the_alpaca_template() -> None:
    one = messages_to_prompt([("system", "Be brief."), ("user", "Name a color.")])
    assert one == format_prompt("Be brief.\n\nName a color.")
    multi = messages_to_prompt([("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")])
    assert multi == format_prompt("Hi") + "Hello!\n\n" + format_prompt("Bye")
    for bad in ([], [("assistant", "x")], [("user", "x"), ("assistant", "y")], [("tool", "x")]):
        with pytest.raises(ApiError) as err:
            messages_to_prompt(bad)
        assert err.value.status == 400


def test_engine_batches_compatible_requests_and_each_gets_its_own_text(model_dir: Path) -> None:
    """Requests waiting together share a batch when their sampling matches (greedy here, with
    different token limits); seeded ones run alone. Every text equals the request run alone."""
    model, _ = resolve_model(model_dir)
    engine = Engine(model, max_queue=16, max_batch=2)
    prompts = ["Once upon a time", "The cat", "Hello there, my friend", "A", "A"]
    samplings = [Sampling(max_new_tokens=n, on_context_full="stop") for n in (9, 4, 6)] + [
        Sampling(max_new_tokens=3, temperature=1.0, seed=seed) for seed in (1, 2)
    ]

    async def one(prompt: str, s: Sampling) -> tuple[str, int]:
        run = engine.run(encode(prompt), s)
        job = await anext(run)
        text = "".join([piece async for piece in run])
        return text, job.n_generated

    async def all_at_once() -> list[tuple[str, int]]:
        tasks = [asyncio.create_task(one(p, s)) for p, s in zip(prompts, samplings, strict=True)]
        await asyncio.sleep(0.05)  # every request is queued before the worker starts
        engine.start()
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(all_at_once())
    finally:
        engine.stop()
    assert engine.batches == 4  # greedy: 2 + 1 (max_batch 2); seeded: 1 + 1
    alone = [generate_text(model, [p], s)[0] for p, s in zip(prompts, samplings, strict=True)]
    assert [text for text, _ in results] == alone
    assert [n for _, n in results] == [9, 4, 6, 3, 3]
    assert results[3] != results[4]  # different seeds


def test_requests_join_a_running_batch_and_still_get_their_own_text(model_dir: Path) -> None:
    model, _ = resolve_model(model_dir)
    engine = Engine(model, max_queue=16, max_batch=8)
    prompts = ["Once upon a time", "The cat", "Hello there, my friend"]
    s = Sampling(max_new_tokens=30, on_context_full="stop")

    async def one(prompt: str, started: asyncio.Event | None = None) -> str:
        pieces = []
        async for piece in engine.run(encode(prompt), s):
            if isinstance(piece, str):
                pieces.append(piece)
                if started is not None:
                    started.set()
        return "".join(pieces)

    async def staggered() -> list[str]:
        started = asyncio.Event()
        first = asyncio.create_task(one(prompts[0], started))
        await started.wait()  # the first is generating: the others join its batch
        rest = asyncio.gather(*(one(p) for p in prompts[1:]))
        return [await first, *await rest]

    engine.start()
    try:
        texts = asyncio.run(staggered())
    finally:
        engine.stop()
    assert engine.batches == 1 and engine.joins >= 1
    assert texts == [generate_text(model, [p], s)[0] for p in prompts]


def test_a_full_queue_answers_503(tiny_model: GPT) -> None:
    engine = Engine(tiny_model, max_queue=1, max_batch=4)  # no worker: the request stays queued

    async def two() -> None:
        first = engine.run([1, 2, 3], Sampling(max_new_tokens=2))
        await anext(first)
        with pytest.raises(ApiError, match="busy") as err:
            await anext(engine.run([4, 5], Sampling(max_new_tokens=2)))
        assert err.value.status == 503
        await first.aclose()  # leaving frees the slot
        assert isinstance(await anext(engine.run([4, 5], Sampling(max_new_tokens=2))), Job)

    asyncio.run(two())


# ---- official clients against the subprocess -------------------------------------------------


def test_ollama_client_chat_generate_list_show(server: str, model_dir: Path) -> None:
    client = ollama.Client(host=server)
    messages = [{"role": "user", "content": "Name three colors."}]
    reply = client.chat(model="tiny", messages=messages, options=greedy(12))
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant" and reply.eval_count <= 12
    streamed = list(client.chat(model="tiny", messages=messages, options=greedy(12), stream=True))
    assert len(streamed) >= 2 and streamed[-1].done and not streamed[0].done
    assert "".join(part.message.content for part in streamed) == reply.message.content

    # The server's text is exactly what gptlab's own generation gives for the templated prompt.
    model, _ = resolve_model(model_dir)
    s = Sampling(max_new_tokens=12, stop_strings=STOP_STRINGS)
    assert (
        reply.message.content == generate_text(model, [format_prompt("Name three colors.")], s)[0]
    )

    gen = client.generate(model="tiny", prompt="Once upon a time", options=greedy(10))
    raw = generate_text(model, ["Once upon a time"], Sampling(max_new_tokens=10))[0]
    assert gen.response == raw and gen.prompt_eval_count == 4
    gen_stream = client.generate(
        model="tiny:latest", prompt="Once upon a time", options=greedy(10), stream=True
    )
    assert "".join(part.response for part in gen_stream) == raw

    assert [m.model for m in client.list().models] == ["tiny:latest"]
    shown = client.show("tiny")
    assert shown.details.family == "gpt2" and shown.modelinfo["gpt2.context_length"] == 512
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.1:8b", messages=messages)
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_openai_client_chat_completions_models(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0
    )
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 10 and reply.usage.prompt_tokens > 20
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text

    done = client.completions.create(model="tiny", prompt="The sky is", max_tokens=6, temperature=0)
    pieces = client.completions.create(
        model="tiny", prompt="The sky is", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text
    assert done.usage.completion_tokens == 6 and done.choices[0].finish_reason == "length"

    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=10_000)


def test_seeded_sampling_repeats_and_differs_by_seed(server: str) -> None:
    body = {"model": "tiny", "prompt": "A", "stream": False}

    def run(seed: int) -> str:
        options = {"temperature": 1.0, "top_k": 50, "seed": seed, "num_predict": 6}
        return httpx.post(f"{server}/api/generate", json={**body, "options": options}).json()[
            "response"
        ]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_concurrent_streams_receive_exactly_their_own_tokens(server: str) -> None:
    """Six clients stream at once (greedy and seeded sampling); each stream must equal the same
    request made alone, and the streams must really have overlapped in time."""
    requests = [
        {"model": "tiny", "prompt": f"Story number {i}:", "options": greedy(24)} for i in range(4)
    ] + [
        {
            "model": "tiny",
            "prompt": "Seeded",
            "options": {"temperature": 0.9, "top_k": 0, "top_p": 1, "seed": s, "num_predict": 8},
        }
        for s in (7, 8)
    ]
    start = threading.Barrier(len(requests))

    def stream(body: dict, out: dict, key: int, together: bool) -> None:
        pieces, times = [], []
        if together:
            start.wait()
        with httpx.stream("POST", f"{server}/api/generate", json=body, timeout=120) as resp:
            for line in resp.iter_lines():
                pieces.append(json.loads(line).get("response", ""))
                times.append(time.monotonic())
        out[key] = ("".join(pieces), times[0], times[-1])

    alone: dict = {}
    for i, body in enumerate(requests):
        stream(body, alone, i, together=False)
    both: dict = {}
    threads = [
        threading.Thread(target=stream, args=(b, both, i, True)) for i, b in enumerate(requests)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = len(requests)
    assert [both[i][0] for i in range(n)] == [alone[i][0] for i in range(n)]
    assert len({alone[i][0] for i in range(4)}) == 4  # different prompts, different texts
    overlapping = [
        i
        for i in range(n)
        if any(j != i and both[i][1] < both[j][2] and both[j][1] < both[i][2] for j in range(n))
    ]
    assert len(overlapping) >= n - 1, "the streams were served one after another"


def test_a_client_that_leaves_ends_its_generation(server: str) -> None:
    """Closing a stream midway (a page's stop button) cancels the request in the engine: the
    worker drops it before its token limit and says so."""
    body = {"model": "tiny", "prompt": "A long story:", "max_tokens": MAX_TOKENS}
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # generating; now leave
    deadline = time.monotonic() + 10
    while not any("cancelled by its client" in x for x in SERVER_LOG):
        assert time.monotonic() < deadline, "the server did not drop the request"
        time.sleep(0.05)
    line = next(x for x in SERVER_LOG if "cancelled by its client" in x)
    n = int(line.split(" after ")[1].split()[0])
    assert n < MAX_TOKENS and f"of {MAX_TOKENS} tokens" in line, line


# ---- garbage, limits and fuzzing, in process -------------------------------------------------


@pytest.fixture(scope="module")
def client(model_dir: Path) -> TestClient:
    limits = ServeLimits(max_tokens=1, max_body_bytes=4096, max_queue=8)  # fast on busy CPUs
    with TestClient(create_app(model_dir, name="tiny", limits=limits)) as c:
        yield c


GARBAGE = [
    b"",
    b"{",
    b"not json",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b"{}",
    b'{"model": 5}',
    b'{"model": "other", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "tiny", "messages": "hello", "prompt": ["a", "b"]}',
    b'{"model": "tiny", "messages": [{"role": "robot", "content": "x"}], "prompt": ""}',
    b'{"model": "tiny", "messages": [{"content": 3}], "prompt": 3}',
    b'{"model": "tiny", "messages": [], "prompt": "", "options": "fast"}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "prompt": "x",'
    b' "options": {"temperature": -1, "top_p": 7}, "temperature": -1}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "prompt": "x",'
    b' "max_tokens": 99999, "options": {"num_predict": 99999}, "n": 3}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "prompt": "x",'
    b' "stream": "maybe", "max_tokens": -5}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"word " * 600 + b'"}],'
    b' "prompt": "' + b"word " * 600 + b'"}',
    b'{"model": "tiny", "prompt": "\xff\xfe"}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "prompt": "x",'
    b' "seed": 1180591620717411303424, "options": {"seed": -1180591620717411303424}}',
    b"{" + b'"a": 1, ' * 2000 + b'"model": "tiny"}',  # over the 4096-byte body limit
]
POST_PATHS = ["/api/generate", "/api/chat", "/api/show", "/v1/chat/completions", "/v1/completions"]


def test_garbage_to_every_endpoint_gets_a_4xx_with_a_reason(client: TestClient) -> None:
    for path in POST_PATHS:
        # Most of these name the model, which is all /api/show needs.
        for body in GARBAGE if path != "/api/show" else [*GARBAGE[:10], GARBAGE[-1]]:
            resp = client.post(path, content=body)
            assert 400 <= resp.status_code < 500, (path, body[:60], resp.status_code, resp.text)
            error = resp.json()["error"]
            message = error["message"] if path.startswith("/v1/") else error
            assert isinstance(message, str) and message
    assert client.post("/api/show", content=GARBAGE[-1]).status_code == 413
    long = client.post("/api/generate", json={"model": "tiny", "prompt": "word " * 600})
    assert long.status_code == 400 and "context is 512" in long.json()["error"]
    assert client.get("/api/chat").status_code == 405
    assert client.post("/api/tags").status_code == 405
    assert client.get("/v1/nothing").status_code == 404


def random_value(rng: random.Random, depth: int = 0) -> object:
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([-1, 0, 1, 2, 64, 10**9, -(10**12), 2**70])
    if kind == "float":
        return rng.choice([0.0, 0.5, 1.0, 2.5, -0.1, 1e308])
    if kind == "str":
        return rng.choice(["", "tiny", "user", "system", "assistant", "x" * 50, "\x00", "é"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["role", "content", "temperature", "num_predict", "top_k", "seed", "stop", "text"]
        return {k: random_value(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 4))}
    return None


def test_seeded_fuzz_never_gets_a_server_error(client: TestClient) -> None:
    """Structured random bodies (valid field names, random types and values) to every endpoint:
    every answer is a 200 or a 4xx, never a 5xx."""
    torch.set_num_threads(1)  # sampling over 50k logits crawls with 2 threads on busy cores
    rng = random.Random(0)
    fields = [
        "model",
        "prompt",
        "messages",
        "options",
        "stream",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "n",
        "system",
        "raw",
        "max_completion_tokens",
        "name",
    ]
    statuses: dict[int, int] = {}
    for i in range(300):
        body = {k: random_value(rng) for k in rng.sample(fields, rng.randint(1, 8))}
        if rng.random() < 0.7:
            body["model"] = "tiny"
        if rng.random() < 0.5:
            body["messages"] = [{"role": "user", "content": "hi"}]
        resp = client.post(POST_PATHS[i % len(POST_PATHS)], json=body)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (body, resp.text)
    assert statuses.get(200, 0) > 10 and statuses.get(400, 0) > 100  # both paths exercised


# ---- shutdown --------------------------------------------------------------------------------


def test_sigterm_stops_the_server_cleanly(model_dir: Path) -> None:
    with served(model_dir, "--max-tokens", "400") as (url, proc):
        got: list[str] = []

        def long_stream() -> None:
            body = {
                "model": "tiny",
                "prompt": "x",
                "options": {"num_predict": 400, "temperature": 0},
            }
            try:
                with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=60) as resp:
                    for line in resp.iter_lines():
                        got.append(line)
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=long_stream)
        t.start()
        while not got:
            time.sleep(0.05)
            if not t.is_alive():
                break
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop within 30 s of SIGTERM")
        t.join(timeout=30)
        assert code == 0
        assert got, "the stream had started before SIGTERM"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/api/tags", timeout=5)


# ---- schemathesis against the OpenAPI schema ---------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(model_dir: Path) -> None:
    """Requests generated from the server's own OpenAPI schema, valid and not, to every
    operation: never a 5xx."""
    settings = hypothesis.settings(
        max_examples=20,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    statuses: dict[int, int] = {}
    with served(model_dir, "--max-tokens", "2") as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]

        for operation in operations:

            @settings
            @hypothesis.given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                if isinstance(case.body, dict) and "model" in case.body:
                    case.body["model"] = "tiny"  # else nearly all are 404s for random names
                response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            check()
    assert len(operations) == 8
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) >= 5, statuses  # both paths
