"""Score model responses with an LLM judge served over Ollama's or an OpenAI-compatible API.

For each entry {instruction, input, output, model_response} of a responses file, the judge is
asked to score the response against the reference output from 0 to 100, answering with the
integer only (temperature 0, a fixed seed). Only a reply in that form, an integer from 0 to
100 and nothing else, is a score: a number inside any other reply ("2 + 2 = 4.") is part of
what the judge said. A reply that is no score is asked again once with a stricter prompt, then
recorded as invalid (never as 0) and shown in the results as unusable. Every score is appended
to a JSON Lines file next to the responses the moment it arrives, so a rerun after an
interruption asks only about the entries still missing.

Before any scoring, the server's model list (/api/tags or /v1/models) says whether the judge
is there; if not, `JudgeUnavailable` names the command to run. Timeouts, connection errors,
429 and 5xx are retried with exponential back-off.

What every judge shares lives here too: the prompt and its parser, `evaluate_responses` (the
report folder, given any `scorer`), `compare` and `win_rate`. The judge gptlab runs itself, and
its protocols, are gptlab.judge_local.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from gptlab.errors import GptlabError, Interrupted
from gptlab.instructions import load_entries
from gptlab.io import (
    append_jsonl,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)
from gptlab.runs import RunDir
from gptlab.settings import JudgeConfig

log = logging.getLogger("gptlab")

SCORE_PROMPT = (
    "You are grading a model's response to an instruction against a reference answer.\n\n"
    "Instruction:\n{instruction}\n\n{input}"
    "Reference answer:\n{output}\n\n"
    "Model response:\n{model_response}\n\n"
    "Score the model response on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
STRICT_SUFFIX = (
    "\n\nYour answer must be a single integer from 0 to 100 and nothing else: "
    "no words, no punctuation, no explanation."
)
# The asked-for form: the integer alone, give or take surrounding space and a final period.
SCORE = re.compile(r"\s*(\d{1,3})\s*\.?\s*")
UNUSABLE_SHOWN = 200  # characters of an unusable reply kept in results.json


class JudgeError(GptlabError):
    """The judge failed in a way retrying now will not fix; stored scores are kept."""


class JudgeUnavailable(JudgeError):
    """No judge server answers at the URL, or it lacks the judge model."""


# ---- inputs and stored scores -------------------------------------------------------------


def load_responses(path: Path) -> list[dict[str, str]]:
    """The entries of a responses file (a JSON list, or JSON Lines), each checked so that a bad
    one is named exactly: the instruction data's checks, plus a `model_response` string."""
    entries = load_entries(path)
    for i, entry in enumerate(entries):
        value = entry.get("model_response")
        if not isinstance(value, str):
            problem = "is missing" if value is None else "must be a string"
            raise GptlabError(f"{path}: entry {i}: field 'model_response' {problem}")
    return entries


def entry_key(entry: dict[str, str]) -> str:
    """Ties a stored score to the exact entry it judged, so an edited file is re-asked."""
    fields = ("instruction", "input", "output", "model_response")
    text = json.dumps([entry.get(k, "") for k in fields])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_scores(path: Path, entries: list[dict[str, str]], judge: str) -> dict[int, dict]:
    """Stored scores that still match their entry and judge; a line cut by a crash is skipped."""
    done: dict[int, dict] = {}
    for record in read_jsonl(path):
        try:
            i = record["index"]
            if record["judge"] == judge and record["key"] == entry_key(entries[i]):
                done[i] = record
        except (KeyError, IndexError, TypeError):
            continue
    return done


def parse_score(reply: str) -> int | None:
    """The score when the whole reply is an integer from 0 to 100, else None."""
    match = SCORE.fullmatch(reply)
    if match is None or int(match.group(1)) > 100:
        return None
    return int(match.group(1))


def score_prompt(entry: dict[str, str]) -> str:
    given = f"Input:\n{entry['input']}\n\n" if entry.get("input") else ""
    return SCORE_PROMPT.format(
        instruction=entry["instruction"],
        input=given,
        output=entry["output"],
        model_response=entry["model_response"],
    )


# ---- talking to the judge -------------------------------------------------------------------


def start_hint(cfg: JudgeConfig) -> str:
    if cfg.api == "ollama":
        return f"start it with `ollama serve`, then `ollama pull {cfg.judge_model}`"
    return (
        f"start an OpenAI-compatible server there serving {cfg.judge_model!r} "
        f"(e.g. `vllm serve {cfg.judge_model}`, or llama.cpp's `llama-server`)"
    )


def headers(cfg: JudgeConfig) -> dict[str, str]:
    key = os.environ.get(cfg.api_key_env) if cfg.api == "openai" else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def same_model(a: str, b: str) -> bool:
    # Ollama names without a tag mean ":latest".
    def norm(x: str) -> str:
        return x if ":" in x else f"{x}:latest"

    return norm(a) == norm(b)


def preflight(cfg: JudgeConfig) -> None:
    """Raise JudgeUnavailable, saying what to run, unless the server answers and has the model."""
    path = "/api/tags" if cfg.api == "ollama" else "/v1/models"
    url = cfg.url.rstrip("/") + path
    try:
        resp = httpx.get(url, timeout=min(cfg.timeout, 10.0), headers=headers(cfg))
    except httpx.HTTPError as exc:
        raise JudgeUnavailable(
            f"no judge server answers at {cfg.url} ({exc.__class__.__name__}); {start_hint(cfg)}"
        ) from None
    try:
        data = resp.json()
        listed = data["models"] if cfg.api == "ollama" else data["data"]
        names = [m.get("name") or m.get("model") or m.get("id") or "" for m in listed]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise JudgeUnavailable(
            f"{url} answered HTTP {resp.status_code} without a model list; is this an "
            f"{'Ollama' if cfg.api == 'ollama' else 'OpenAI-compatible'} server? {start_hint(cfg)}"
        ) from None
    if not any(same_model(n, cfg.judge_model) for n in names):
        pull = (
            f"run `ollama pull {cfg.judge_model}`"
            if cfg.api == "ollama"
            else f"serve {cfg.judge_model!r} there"
        )
        raise JudgeUnavailable(
            f"the judge server at {cfg.url} has no model {cfg.judge_model!r} "
            f"(it has: {', '.join(names) or 'none'}); {pull}"
        )


def request_body(cfg: JudgeConfig, prompt: str) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": prompt}]
    if cfg.api == "ollama":
        options = {
            "temperature": 0,
            "seed": cfg.seed,
            "num_ctx": cfg.num_ctx,
            "num_predict": cfg.max_tokens,
        }
        body = {"model": cfg.judge_model, "messages": messages, "stream": False}
        return "/api/chat", {**body, "options": options}
    body = {"model": cfg.judge_model, "messages": messages, "temperature": 0, "seed": cfg.seed}
    return "/v1/chat/completions", {**body, "max_tokens": cfg.max_tokens}


class Rejected(Exception):
    """The judge refused this one request (4xx): it is recorded as invalid, not retried."""


async def ask(client: httpx.AsyncClient, cfg: JudgeConfig, prompt: str) -> str:
    """The judge's reply text, retrying what may pass on a second try."""
    path, body = request_body(cfg, prompt)
    reason = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            await asyncio.sleep(cfg.backoff * 2 ** (attempt - 1))
        try:
            resp = await client.post(path, json=body)
        except httpx.TimeoutException:
            reason = f"no answer within {cfg.timeout:g} s"
            continue
        except httpx.TransportError as exc:
            reason = f"{exc.__class__.__name__}: {exc}"
            continue
        if resp.status_code == 429 or resp.status_code >= 500:
            reason = f"HTTP {resp.status_code}"
            continue
        if resp.status_code in (400, 413, 422):
            raise Rejected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise JudgeError(f"{cfg.url}{path} answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()
            if cfg.api == "ollama":
                return str(data["message"]["content"] or "")
            return str(data["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(
                f"{cfg.url}{path} answered with no chat message: {resp.text[:200]!r}"
            ) from None
    raise JudgeError(
        f"the judge at {cfg.url} failed {cfg.retries + 1} times ({reason}); the scores so far "
        "are saved, rerun the same command to continue"
    )


async def judge_entry(
    client: httpx.AsyncClient, cfg: JudgeConfig, index: int, entry: dict[str, str]
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "judge": cfg.judge_model, "key": entry_key(entry)}
    prompt = score_prompt(entry)
    replies: list[str] = []
    try:
        for text in (prompt, prompt + STRICT_SUFFIX):
            replies.append(await ask(client, cfg, text))
            score = parse_score(replies[-1])
            if score is not None:
                return {**record, "score": score, "replies": replies}
    except Rejected as exc:
        record["error"] = str(exc)
    return {**record, "score": None, "replies": replies}


async def judge_all(
    cfg: JudgeConfig, entries: list[dict[str, str]], todo: list[int], path: Path
) -> None:
    """Score `todo` with up to `concurrency` requests in flight, storing each as it arrives."""
    pending = list(todo)
    bar = tqdm(total=len(todo), desc=f"judging {path.name}", unit="entry", leave=False)
    timeout = httpx.Timeout(cfg.timeout)
    limits = httpx.Limits(max_connections=cfg.concurrency)
    async with httpx.AsyncClient(
        base_url=cfg.url, timeout=timeout, limits=limits, headers=headers(cfg)
    ) as client:

        async def worker() -> None:
            while pending:
                i = pending.pop(0)
                append_jsonl(path, await judge_entry(client, cfg, i, entries[i]))
                bar.update()

        tasks = [asyncio.create_task(worker()) for _ in range(min(cfg.concurrency, len(todo)))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise the first failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()


def score_file(cfg: JudgeConfig, responses: Path) -> tuple[list[dict], list[dict]]:
    """(entries, one score record per entry), asking the judge only about unscored entries."""
    entries = load_responses(responses)
    path = cfg.scores_path(responses)
    done = load_scores(path, entries, cfg.judge_model)
    todo = [i for i in range(len(entries)) if i not in done]
    if done:
        log.info(
            "%s: %d of %d already scored, asking about %d", path, len(done), len(entries), len(todo)
        )
    if todo:
        try:
            asyncio.run(judge_all(cfg, entries, todo, path))
        except KeyboardInterrupt:
            raise Interrupted(
                f"stopped; the scores so far are in {path}, rerun the same command to continue"
            ) from None
        done = load_scores(path, entries, cfg.judge_model)
    return entries, [done[i] for i in range(len(entries))]


# ---- the report -------------------------------------------------------------------------------


def summarize(entries: list[dict], records: list[dict], n_lowest: int) -> dict[str, Any]:
    scores = [r["score"] for r in records if r["score"] is not None]
    ranked = sorted((r for r in records if r["score"] is not None), key=lambda r: r["score"])
    lowest = [
        {
            "index": r["index"],
            "score": r["score"],
            "instruction": entries[r["index"]]["instruction"],
            "output": entries[r["index"]]["output"],
            "model_response": entries[r["index"]]["model_response"],
        }
        for r in ranked[:n_lowest]
    ]
    return {
        "average": statistics.fmean(scores) if scores else None,
        "median": statistics.median(scores) if scores else None,
        "n": len(records),
        "scored": len(scores),
        "invalid": len(records) - len(scores),
        "lowest": lowest,
        "unusable": [
            {"index": r["index"], "reply": unusable_reply(r)[:UNUSABLE_SHOWN]}
            for r in records
            if r["score"] is None
        ],
    }


def win_rate(wins: int, ties: int, n: int, z: float = 1.96) -> dict[str, Any]:
    """The second side's win rate over `n` items, a tie counting half a win, with its Wilson
    score interval (95% for z = 1.96): one number and how far chance alone could move it."""
    if n == 0:
        return {"win_rate": None, "interval": None}
    p = (wins + ties / 2) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"win_rate": p, "interval": [max(0.0, centre - half), min(1.0, centre + half)]}


def unusable_reply(record: dict) -> str:
    """What the judge said instead of a score: its last reply, or (in-process `expected`) how
    little probability it put on the score strings."""
    if record.get("replies"):
        return record["replies"][-1]
    if "mass" in record:
        return f"(probability {record['mass']:.3g} on the replies 0 to 100)"
    return record.get("error", "")


def compare(
    path_a: Path, records_a: list[dict], path_b: Path, records_b: list[dict], entries: list[dict]
) -> tuple[dict[str, Any], str]:
    """Win/tie/loss counts over entries both files have a score for, the second file's win rate
    with its interval, and a markdown table."""
    pairs = [(a["score"], b["score"]) for a, b in zip(records_a, records_b, strict=True)]
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    b_wins, ties = sum(b > a for a, b in both), sum(a == b for a, b in both)
    summary = {
        "a": str(path_a),
        "b": str(path_b),
        "both_scored": len(both),
        "a_wins": sum(a > b for a, b in both),
        "b_wins": b_wins,
        "ties": ties,
        "mean_difference": statistics.fmean(b - a for a, b in both) if both else None,
        **win_rate(b_wins, ties, len(both)),
    }
    rows = [f"| # | instruction | {path_a.name} | {path_b.name} |", "|---|---|---|---|"]
    for i, (a, b) in enumerate(pairs):
        rows.append(f"| {i} | {table_text(entries[i])} | {shown(a)} | {shown(b)} |")
    return summary, "\n".join(rows) + "\n"


def table_text(entry: dict[str, str]) -> str:
    """An entry's instruction as one markdown table cell."""
    return entry["instruction"].replace("\n", " ").replace("|", "\\|")[:60]


def shown(score: float | None) -> str:
    """A score as a table cell: integers as they are, expected scores to one decimal."""
    if score is None:
        return "invalid"
    return f"{score:g}" if isinstance(score, int) else f"{score:.1f}"


def plot_histogram(path: Path, series: dict[str, list[int]], judge: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(list(series.values()), bins=range(0, 111, 10), label=list(series), alpha=0.8)
    ax.set_xlabel("judge score (0-100)")
    ax.set_ylabel("responses")
    ax.set_title(f"scores by {judge}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


Scorer = Callable[[Path], tuple[list[dict], list[dict]]]


def evaluate_responses(
    config: JudgeConfig,
    scorer: Scorer | None = None,
    judge: str | None = None,
    about: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the responses file (and `compare`, if set), write the report folder and return its
    results: judge, protocol, average (the headline), median, n, scored, invalid, lowest,
    compare, and histogram (None when no reply held a score). `scorer(path)` gives a file's
    (entries, records) (default: the server at config.url, `score_file`); `judge` names it and
    `about` adds what results.json should say of it (an in-process judge's weights)."""
    load_responses(config.responses)  # fail on a bad file before contacting anyone
    if config.compare is not None:
        load_responses(config.compare)
    if scorer is None:
        preflight(config)
    score = scorer or (lambda path: score_file(config, path))
    judge = judge or config.judge_model
    run = RunDir(config.out_path())
    run.prepare(config.to_json(), True)
    entries, records = score(config.responses)
    results: dict[str, Any] = {
        "task": "evaluate",
        "judge": judge,
        **(about or {}),
        "protocol": config.protocol,
        "responses": str(config.responses),
        **summarize(entries, records, config.n_lowest),
    }
    series = {config.responses.name: [r["score"] for r in records if r["score"] is not None]}
    run.log({"kind": "judge", "file": str(config.responses), **results})
    if config.compare is not None:
        entries_b, records_b = score(config.compare)
        check_same_entries(config, entries, entries_b)
        summary_b = summarize(entries_b, records_b, config.n_lowest)
        run.log({"kind": "judge", "file": str(config.compare), **summary_b})
        side, table = compare(config.responses, records, config.compare, records_b, entries)
        results["compare"] = {**side, "b_summary": summary_b}
        atomic_write_text(run.path / "comparison.md", table)
        series[config.compare.name] = [r["score"] for r in records_b if r["score"] is not None]
    results["histogram"] = histogram(run.path / "scores.png", series, judge)
    atomic_write_json(run.path / "results.json", results)
    return results


def check_same_entries(config: JudgeConfig, entries: list[dict], entries_b: list[dict]) -> None:
    if [e["instruction"] for e in entries_b] != [e["instruction"] for e in entries]:
        raise GptlabError(
            f"{config.compare}: its instructions differ from {config.responses}'s; "
            "a comparison needs the same entries in the same order"
        )


def histogram(plot: Path, series: dict[str, list], judge: str) -> str | None:
    """The scores' histogram at `plot` (its name), or None with no plot when nothing scored."""
    drawn = {name: scores for name, scores in series.items() if scores}
    if drawn:
        plot_histogram(plot, drawn, judge)
        return plot.name
    plot.unlink(missing_ok=True)  # an empty plot says nothing; an earlier run's would mislead
    return None
