"""`gptlab evaluate`: score a responses file with an LLM judge (Ollama or OpenAI API)."""

from __future__ import annotations

from typing import Any

from gptlab.errors import GptlabError
from gptlab.judge import evaluate_responses
from gptlab.settings import JudgeConfig


def run(config: JudgeConfig) -> int:
    """Print the scores; exit status 2 when a file got no usable score at all, since an average
    over nothing is no result."""
    results = evaluate_responses(config)
    print(summary_line(str(config.responses), results))
    for low in results["lowest"][:3]:
        print(f"  lowest: #{low['index']} score {low['score']}: {low['instruction'][:70]!r}")
    for bad in results["unusable"][:3]:
        print(f"  unusable reply: #{bad['index']}: {bad['reply'][:70]!r}")
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
    files = [(config.responses, results)]
    if "compare" in results:
        files.append((config.compare, results["compare"]["b_summary"]))
    for path, r in files:
        if r["scored"] == 0:
            raise GptlabError(
                f"{path}: none of the judge's replies to its {r['n']} responses held a score "
                f"from 0 to 100 (replies in {config.scores_path(path)}); is {config.judge_model!r} "
                "a chat model that follows instructions?"
            )
    return 0


def summary_line(name: str, r: dict[str, Any]) -> str:
    avg = "n/a" if r["average"] is None else f"{r['average']:.1f}"
    median = "n/a" if r["median"] is None else f"{r['median']:g}"
    return (
        f"{name}: average score {avg} (median {median}) over {r['scored']} of {r['n']} "
        f"responses; {r['invalid']} invalid judge replies"
    )
