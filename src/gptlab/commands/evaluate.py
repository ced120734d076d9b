"""`gptlab evaluate`: score a responses file with an LLM judge (Ollama or OpenAI API)."""

from __future__ import annotations

from typing import Any

from gptlab.judge import evaluate_responses
from gptlab.settings import JudgeConfig


def run(config: JudgeConfig) -> int:
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
