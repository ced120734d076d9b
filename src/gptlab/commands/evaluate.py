"""`gptlab evaluate`: score a responses file with an LLM judge, run in-process (--judge) or
served over Ollama's or OpenAI's API."""

from __future__ import annotations

from typing import Any

from gptlab.errors import GptlabError
from gptlab.judge_local import evaluate
from gptlab.settings import JudgeConfig


def run(config: JudgeConfig) -> int:
    """Print the scores; exit status 2 when a file got no usable score at all, since an average
    over nothing is no result."""
    results = evaluate(config)
    if results["protocol"] == "pairwise":
        print(win_line(results["compare"], f"pairwise, tie margin {config.tie_margin:g}"))
        print(f"report: {config.out_path()}")
        return 0
    print(summary_line(str(config.responses), results))
    for low in results["lowest"][:3]:
        print(f"  lowest: #{low['index']} score {low['score']:g}: {low['instruction'][:70]!r}")
    for bad in results["unusable"][:3]:
        print(f"  unusable reply: #{bad['index']}: {bad['reply'][:70]!r}")
    if "compare" in results:
        c = results["compare"]
        print(summary_line(c["b"], c["b_summary"]))
        diff = c["mean_difference"]
        print(
            win_line(c, f"{c['both_scored']} entries both scored")
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
                f"from 0 to 100 (replies in {config.scores_path(path)}); is {results['judge']!r} "
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


def win_line(c: dict[str, Any], how: str) -> str:
    """The side-by-side counts and the second file's win rate with its 95% interval."""
    rate = "n/a"
    if c["win_rate"] is not None:
        low, high = c["interval"]
        rate = f"{c['win_rate']:.1%} (95% interval {low:.1%} to {high:.1%})"
    return (
        f"side by side ({how}): first better {c['a_wins']}, second better {c['b_wins']}, "
        f"ties {c['ties']}; the second's win rate {rate}"
    )
