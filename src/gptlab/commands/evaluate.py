"""`gptlab evaluate`: score a responses file with an LLM judge (Ollama or OpenAI API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptlab.commands.common import add_command, positive_int
from gptlab.judge import JudgeConfig, evaluate_responses

DEFAULTS = JudgeConfig(responses=Path("responses.json"))


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "evaluate",
        run,
        "score model responses with an LLM judge",
        "Ask a judge model (Ollama's /api/chat, or --api openai for any OpenAI-compatible "
        "server) to score each response against its reference from 0 to 100. Scores are "
        "stored as they arrive in RESPONSES.scores.jsonl, so rerunning an interrupted "
        "evaluation only asks about the rest. The report (results.json, scores.png) goes to "
        "--out.",
    )
    p.add_argument(
        "--responses",
        type=Path,
        required=True,
        help="JSON list of entries with instruction, input, output, model_response",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a second responses file to score and compare side by side",
    )
    p.add_argument("--judge-model", default=DEFAULTS.judge_model)
    p.add_argument("--url", default=DEFAULTS.url)
    p.add_argument("--api", choices=["ollama", "openai"], default=DEFAULTS.api)
    p.add_argument(
        "--api-key-env",
        default=DEFAULTS.api_key_env,
        help="environment variable holding the API key (--api openai)",
    )
    p.add_argument("--concurrency", type=positive_int, default=DEFAULTS.concurrency)
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout, help="seconds per request")
    p.add_argument("--retries", type=int, default=DEFAULTS.retries)
    p.add_argument("--backoff", type=float, default=DEFAULTS.backoff, help="first retry delay (s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--scores", type=Path, default=None, help="default: RESPONSES.scores.jsonl")
    p.add_argument(
        "--out", type=Path, default=None, help="report folder (default: RESPONSES-judge)"
    )


def run(args: argparse.Namespace) -> int:
    keys = (
        "responses",
        "compare",
        "judge_model",
        "url",
        "api",
        "api_key_env",
        "concurrency",
        "timeout",
        "retries",
        "backoff",
        "seed",
        "scores",
        "out",
    )
    config = JudgeConfig(**{k: getattr(args, k) for k in keys})
    results = evaluate_responses(config)
    print(summary_line(str(config.responses), results))
    for low in results["lowest"][:3]:
        print(f"  lowest: #{low['index']} score {low['score']}: {low['instruction'][:70]!r}")
    if "compare" in results:
        c = results["compare"]
        print(summary_line(c["b"], c["b_summary"]))
        diff = c["mean_difference"]
        print(
            f"side by side on {c['both_scored']} entries: first better {c['a_wins']}, second "
            f"better {c['b_wins']}, ties {c['ties']}"
            + ("" if diff is None else f"; mean difference (second - first) {diff:+.1f}")
        )
    print(f"report: {config.out_path()}")
    return 0


def summary_line(name: str, r: dict[str, Any]) -> str:
    avg = "n/a" if r["average"] is None else f"{r['average']:.1f}"
    median = "n/a" if r["median"] is None else f"{r['median']:g}"
    return (
        f"{name}: average score {avg} (median {median}) over {r['scored']} of {r['n']} "
        f"responses; {r['invalid']} invalid judge replies"
    )
