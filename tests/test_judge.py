"""The judge against real HTTP servers on loopback: a small scripted judge (to count requests
and misbehave on purpose: down, slow, 500s) and `gptlab serve` with a tiny model."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gptlab.errors import GptlabError
from gptlab.judge import (
    JudgeError,
    JudgeUnavailable,
    evaluate_responses,
    load_scores,
    parse_score,
)
from gptlab.settings import JudgeConfig
from tests.serve_process import gptlab_command, gptlab_env, save_tiny_model, served


class FakeJudge:
    """An Ollama/OpenAI-shaped judge whose reply to a prompt is `answer(prompt)`; it records
    every chat request and can fail (500) or stall on chosen requests."""

    def __init__(self, answer: Callable[[str], str], models: tuple[str, ...] = ("llama3.1:8b",)):
        self.answer = answer
        self.models = models
        self.prompts: list[str] = []
        self.auth: list[str | None] = []
        self.fail: Callable[[int], bool] = lambda n: False  # n: the request's 0-based number
        self.stall: Callable[[int], float] = lambda n: 0.0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    self.reply(200, {"models": [{"name": m, "model": m} for m in judge.models]})
                elif self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": m} for m in judge.models]})
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with judge.lock:
                    n = len(judge.prompts)
                    judge.prompts.append(prompt)
                    judge.auth.append(self.headers.get("Authorization"))
                time.sleep(judge.stall(n))
                if judge.fail(n):
                    self.reply(500, {"error": "overloaded"})
                    return
                text = judge.answer(prompt)
                if self.path == "/api/chat":
                    assert body["stream"] is False and body["options"]["temperature"] == 0
                    self.reply(200, {"message": {"role": "assistant", "content": text}})
                else:
                    self.reply(200, {"choices": [{"message": {"content": text}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def by_response(prompt: str) -> str:
    """Score = the number after 'answer-' in the model response; 'answer-bad' never gives one,
    'answer-late' gives one only to the stricter prompt."""
    word = prompt.split("Model response:\n")[1].split()[0]
    if word == "answer-bad":
        return "What a lovely response!"
    if word == "answer-late":
        return "42" if "nothing else" in prompt else "Great work."
    return word.removeprefix("answer-")


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    j = FakeJudge(by_response)
    yield j
    j.close()


def write_responses(path: Path, responses: list[str]) -> Path:
    entries = [
        {
            "instruction": f"Task {i}",
            "input": "" if i % 2 else f"data {i}",
            "output": f"reference {i}",
            "model_response": r,
        }
        for i, r in enumerate(responses)
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def config(responses: Path, url: str, **kw: object) -> JudgeConfig:
    return JudgeConfig(responses=responses, url=url, backoff=0.01, **kw)


def test_only_a_bare_integer_from_0_to_100_is_a_score() -> None:
    """The prompt asks for the integer only: a number inside any other reply is part of what
    the judge said, not its score."""
    cases = {
        "85": 85,
        " 100\n": 100,
        "0": 0,
        "85.": 85,
        "2 + 2 = 4.": None,
        "45 kilometers is 45,000 meters.": None,
        "Score: 7/100": None,
        "85/100": None,
        "I'd say 250, no, 90": None,
        "101": None,
        "8.5": None,
        "-5": None,
        "excellent": None,
        "": None,
    }
    assert {text: parse_score(text) for text in cases} == cases


def test_scores_report_and_stricter_retry(tmp_path: Path, judge: FakeJudge) -> None:
    scores = ["answer-10", "answer-90", "answer-bad", "answer-late", "answer-70", "answer-30"]
    path = write_responses(tmp_path / "responses.json", scores)
    results = evaluate_responses(config(path, judge.url, n_lowest=2, concurrency=3))
    assert results["n"] == 6 and results["scored"] == 5 and results["invalid"] == 1
    assert results["average"] == pytest.approx((10 + 90 + 42 + 70 + 30) / 5)
    assert results["median"] == 42
    assert [low["score"] for low in results["lowest"]] == [10, 30]
    assert results["lowest"][0]["model_response"] == "answer-10"
    # One request each, plus the stricter second try for the two that gave no number at first.
    assert len(judge.prompts) == 8
    assert sum("nothing else" in p for p in judge.prompts) == 2
    out = tmp_path / "responses-judge"
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    records = [json.loads(line) for line in (tmp_path / "responses.scores.jsonl").open()]
    invalid = next(r for r in records if r["index"] == 2)
    assert invalid["score"] is None and len(invalid["replies"]) == 2  # recorded, not a 0


def test_interrupted_evaluation_resumes_without_asking_again(
    tmp_path: Path, judge: FakeJudge
) -> None:
    path = write_responses(tmp_path / "r.json", [f"answer-{10 * i}" for i in range(8)])
    judge.fail = lambda n: n >= 3  # the judge breaks down after three answers
    with pytest.raises(JudgeError, match="rerun"):
        evaluate_responses(config(path, judge.url, concurrency=1, retries=1))
    first_run = set(judge.prompts[:3])  # answered; the fourth entry's prompt failed twice
    scores_file = tmp_path / "r.scores.jsonl"
    assert len(scores_file.read_text().splitlines()) == 3
    with scores_file.open("a") as f:
        f.write('{"index": 5, "judge": "llama3')  # a line cut by a crash is ignored

    judge.fail = lambda n: False
    judge.prompts.clear()
    results = evaluate_responses(config(path, judge.url, concurrency=4))
    assert len(judge.prompts) == 5 and not first_run & set(judge.prompts)
    assert results["scored"] == 8 and results["average"] == pytest.approx(35.0)

    judge.prompts.clear()
    assert evaluate_responses(config(path, judge.url))["average"] == pytest.approx(35.0)
    assert judge.prompts == []  # everything stored: nothing asked
    # Another judge model, or an edited entry, is asked again.
    entries = json.loads(path.read_text())
    entries[0]["model_response"] = "answer-100"
    path.write_text(json.dumps(entries))
    assert sorted(load_scores(scores_file, entries, "llama3.1:8b")) == list(range(1, 8))
    assert load_scores(scores_file, entries, "other-judge") == {}


def test_judge_down_or_missing_the_model_says_what_to_run(tmp_path: Path) -> None:
    path = write_responses(tmp_path / "r.json", ["answer-1"])
    with pytest.raises(JudgeUnavailable, match="ollama serve"):
        evaluate_responses(config(path, "http://127.0.0.1:9"))
    other = FakeJudge(by_response, models=("mistral:latest",))
    try:
        with pytest.raises(JudgeUnavailable, match=r"ollama pull llama3\.1:8b"):
            evaluate_responses(config(path, other.url))
        with pytest.raises(JudgeUnavailable, match="has no model 'gpt-4o'"):
            evaluate_responses(config(path, other.url, api="openai", judge_model="gpt-4o"))
        # A model named without a tag is Ollama's ":latest".
        assert evaluate_responses(config(path, other.url, judge_model="mistral"))["scored"] == 1
    finally:
        other.close()


def test_slow_and_failing_requests_are_retried_with_backoff(
    tmp_path: Path, judge: FakeJudge
) -> None:
    path = write_responses(tmp_path / "r.json", ["answer-50", "answer-60"])
    judge.fail = lambda n: n in (0, 1)  # two 500s in a row
    judge.stall = lambda n: 2.0 if n == 2 else 0.0  # then one answer too slow to wait for
    start = time.monotonic()
    results = evaluate_responses(config(path, judge.url, concurrency=1, timeout=0.5, retries=3))
    assert results["scored"] == 2 and results["average"] == 55
    assert len(judge.prompts) == 5  # 500, 500, timeout, then both answered
    assert time.monotonic() - start < 10

    judge.fail = lambda n: True
    judge.prompts.clear()
    (tmp_path / "r.scores.jsonl").unlink()
    with pytest.raises(JudgeError, match=r"failed 3 times \(HTTP 500\)"):
        evaluate_responses(config(path, judge.url, concurrency=1, retries=2))
    assert len(judge.prompts) == 3


def test_openai_api_sends_the_key_and_compares_two_files(
    tmp_path: Path, judge: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_responses(tmp_path / "a.json", ["answer-10", "answer-80", "answer-bad", "answer-50"])
    b = write_responses(tmp_path / "b.json", ["answer-30", "answer-80", "answer-20", "answer-40"])
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    cfg = config(a, judge.url, api="openai", api_key_env="JUDGE_KEY", compare=b)
    results = evaluate_responses(cfg)
    assert set(judge.auth) == {"Bearer sekret"}
    c = results["compare"]
    assert (c["both_scored"], c["a_wins"], c["b_wins"], c["ties"]) == (3, 1, 1, 1)
    assert c["mean_difference"] == pytest.approx((20 + 0 - 10) / 3)
    assert c["b_summary"]["average"] == pytest.approx(42.5)
    table = (tmp_path / "a-judge" / "comparison.md").read_text()
    assert "| 2 | Task 2 | invalid | 20 |" in table


def test_bad_responses_files_are_named_exactly(tmp_path: Path, judge: FakeJudge) -> None:
    bad = tmp_path / "bad.json"
    cases = {
        "[]": "holds no entries",
        '[{"instruction": "x", "output": "y"}]': "entry 0: field 'model_response' is missing",
        '[{"instruction": "x", "output": "y", "model_response": "z", "input": 3}]': (
            "entry 0: field 'input' must be a string"
        ),
        '[\n{"instruction": ]': r"bad\.json:2: not valid JSON",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(GptlabError, match=message):
            evaluate_responses(config(bad, judge.url))
    assert judge.prompts == []


def evaluate_cli(*args: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    """`gptlab [-v] evaluate ARGS` with progress bars off, so stderr holds only what is said."""
    return subprocess.run(
        gptlab_command(*(["-v"] if verbose else []), "evaluate", *args),
        capture_output=True,
        text=True,
        env={**gptlab_env(), "TQDM_DISABLE": "1"},
        timeout=120,
    )


def test_cli_logs_each_judge_request_only_with_verbose(tmp_path: Path, judge: FakeJudge) -> None:
    path = write_responses(tmp_path / "r.json", ["answer-60", "answer-80"])
    args = ("--responses", str(path), "--url", judge.url)
    quiet = evaluate_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert len(judge.prompts) == 2  # two requests were made, and none was logged
    assert "HTTP Request" not in quiet.stderr and quiet.stderr == ""
    assert "average score 70.0 (median 70) over 2 of 2 responses" in quiet.stdout
    (tmp_path / "r.scores.jsonl").unlink()  # so that the judge is asked again
    verbose = evaluate_cli(*args, verbose=True)
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stderr.count(f"HTTP Request: POST {judge.url}/api/chat") == 2


def test_cli_with_out_journals_the_scores_there_and_leaves_the_run_alone(
    tmp_path: Path, judge: FakeJudge
) -> None:
    """Responses inside finished runs are read, never written to: with --out, the score
    journals (also of a --compare file of the same name) go into the report folder."""
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-b").mkdir()
    a = write_responses(tmp_path / "run-a" / "r.json", ["answer-60"])
    b = write_responses(tmp_path / "run-b" / "r.json", ["answer-80"])
    report = tmp_path / "report"
    args = ("--responses", str(a), "--compare", str(b), "--url", judge.url, "--out", str(report))
    done = evaluate_cli(*args)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in a.parent.iterdir()) == ["r.json"]
    assert sorted(p.name for p in b.parent.iterdir()) == ["r.json"]
    for name, score in (("r.scores.jsonl", 60), ("r.compare.scores.jsonl", 80)):
        [record] = [json.loads(line) for line in (report / name).read_text().splitlines()]
        assert record["score"] == score
    asked = len(judge.prompts)
    again = evaluate_cli(*args)  # the journals in --out are where a rerun looks
    assert again.returncode == 0, again.stderr
    assert len(judge.prompts) == asked
    assert sorted(p.name for p in a.parent.iterdir()) == ["r.json"]


def test_cli_fails_when_no_judge_reply_is_usable_and_draws_no_plot(tmp_path: Path) -> None:
    chatty = FakeJudge(lambda prompt: "What a lovely response!")
    try:
        path = write_responses(tmp_path / "r.json", ["answer-10", "answer-20", "answer-30"])
        done = evaluate_cli("--responses", str(path), "--url", chatty.url, "--backoff", "0.01")
    finally:
        chatty.close()
    assert len(chatty.prompts) == 6  # each asked twice: plainly, then with the stricter prompt
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (
        f"gptlab evaluate: error: {path}: none of the judge's replies to its 3 responses held a "
        f"score from 0 to 100 (replies in {tmp_path / 'r.scores.jsonl'}); is 'llama3.1:8b' a "
        "chat model that follows instructions?\n"
    )
    assert "average score n/a (median n/a) over 0 of 3 responses; 3 invalid judge replies" in (
        done.stdout
    )
    results = json.loads((tmp_path / "r-judge" / "results.json").read_text())
    assert results["scored"] == 0 and results["invalid"] == 3 and results["histogram"] is None
    assert not (tmp_path / "r-judge" / "scores.png").exists()


def test_cli_counts_numbers_inside_a_reply_as_unusable(tmp_path: Path) -> None:
    """A small judge that repeats the answer it grades ("2 + 2 = 4.") gives no score: such a
    reply is counted and shown as unusable, never read as a score of 2."""

    def echo(prompt: str) -> str:
        response = prompt.split("Model response:\n")[1].split("\n\n")[0]
        return "90" if response == "Paris." else response

    parrot = FakeJudge(echo)
    answers = ["2 + 2 = 4.", "Paris.", "45 kilometers is 45,000 meters."]
    try:
        path = write_responses(tmp_path / "r.json", answers)
        done = evaluate_cli("--responses", str(path), "--url", parrot.url, "--backoff", "0.01")
    finally:
        parrot.close()
    assert done.returncode == 0, done.stderr
    assert len(parrot.prompts) == 5  # the two unusable replies were asked again, strictly
    assert "average score 90.0 (median 90) over 1 of 3 responses; 2 invalid judge replies" in (
        done.stdout
    )
    assert "  unusable reply: #0: '2 + 2 = 4.'" in done.stdout
    results = json.loads((tmp_path / "r-judge" / "results.json").read_text())
    assert (results["scored"], results["invalid"], results["average"]) == (1, 2, 90)
    assert results["unusable"] == [
        {"index": 0, "reply": "2 + 2 = 4."},
        {"index": 2, "reply": "45 kilometers is 45,000 meters."},
    ]


# ---- end to end: `gptlab evaluate` with `gptlab serve` as the judge ---------------------------


@pytest.mark.slow  # two CLI processes and a server: 15-35 s on 2 busy cores
def test_cli_evaluate_with_gptlab_serve_as_the_judge(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "judge-model")
    path = write_responses(tmp_path / "responses.json", ["Paris.", "Blue and red.", "42"])
    with served(model, "--max-tokens", "16") as (url, _):
        args = ["evaluate", "--responses", str(path), "--judge-model", "tiny", "--url", url]
        done = subprocess.run(
            gptlab_command(*args, "--concurrency", "2"),
            capture_output=True,
            text=True,
            env=gptlab_env(),
            timeout=300,
        )
        results = json.loads((tmp_path / "responses-judge" / "results.json").read_text())
        assert results["n"] == 3 and results["scored"] + results["invalid"] == 3
        # A random tiny model does not answer with a bare number: invalid, and asked twice;
        # with no score at all the command says so and exits 2.
        assert results["invalid"] >= 1 and len(results["unusable"]) == results["invalid"]
        assert done.returncode == (2 if results["scored"] == 0 else 0), done.stderr
        records = [json.loads(x) for x in (tmp_path / "responses.scores.jsonl").open()]
        assert all(len(r["replies"]) == 2 for r in records if r["score"] is None)
        assert f"{results['invalid']} invalid judge replies" in done.stdout

        missing = subprocess.run(
            gptlab_command(*args[:3], "--url", url),  # the default judge, llama3.1:8b
            capture_output=True,
            text=True,
            env=gptlab_env(),
            timeout=120,
        )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "ollama pull llama3.1:8b" in missing.stderr
