"""Does the in-process judge rank a right answer above a wrong one? Each protocol, on entries of
the bundled instruction data, each judged with three candidate responses: its reference answer,
another entry's reference (a wrong answer) and "I don't know.".

    PYTHONPATH=src python benchmarks/judge_calibration.py --n 40 --journal calib.jsonl

Per entry, for each candidate, one pass of the `expected` protocol (gptlab.scoring.score_tree
over the replies "0" ... "100"); the `score` protocol's greedy reply is read from the same pass
when greedy decoding gives one of those replies (each of its tokens the most likely one, then
the end of turn: exactly what greedy generation would write), else generated as
`judge_local.judge_score` does, strict retry included. Then `pairwise`: reference against the
wrong answer and against "I don't know.", both orders each. Every entry is journaled as it
finishes (rerun the same command to continue; --n may grow), and the summary is printed from
the journal: the means, and per entry how often the reference beats each other candidate.
`--time-score K` first times the product's `score` protocol (judge_score) on the reference
answers of the first K entries already journaled, and prints the score read from the pass
beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from gptlab.instructions import load_entries
from gptlab.io import append_jsonl, read_jsonl
from gptlab.judge import score_prompt
from gptlab.judge_local import (
    LocalJudge,
    expected_record,
    judge_pairwise,
    judge_score,
    load_judge,
    score_strings,
)
from gptlab.scoring import Request, score_tree

IDK = "I don't know."
OTHERS = ("wrong", "idk")
WRONG_OFFSET = 17  # the wrong answer is entry (i + 17)'s reference: another task entirely


def candidates(entries: list[dict[str, str]], i: int) -> dict[str, dict[str, str]]:
    wrong = entries[(i + WRONG_OFFSET) % len(entries)]["output"]
    answers = {"reference": entries[i]["output"], "wrong": wrong, "idk": IDK}
    return {name: {**entries[i], "model_response": a} for name, a in answers.items()}


def judge_entry(judge: LocalJudge, entries: list[dict[str, str]], i: int) -> dict[str, Any]:
    """One entry's journal record: each candidate's expected and score, the pairwise verdicts,
    and the seconds each part took."""
    record: dict[str, Any] = {"index": i, "expected": {}, "score": {}, "mass": {}, "read": {}}
    start = time.perf_counter()
    cands = candidates(entries, i)
    for name, entry in cands.items():
        ids = judge.chat_ids(score_prompt(entry))
        r = expected_record(score_tree(judge.llm.model, Request(ids, score_strings(judge))))
        record["expected"][name], record["mass"][name] = r["score"], r["mass"]
        if r["greedy"] is not None:
            record["score"][name], record["read"][name] = r["greedy"], "pass"
        else:
            record["score"][name] = judge_score(judge, [entry])[0]["score"]
            record["read"][name] = "generated"
    middle = time.perf_counter()
    pairs = [(cands["reference"], cands[other]) for other in OTHERS]
    verdicts = judge_pairwise(judge, pairs)
    record["pairwise"] = {o: v["verdict"] for o, v in zip(OTHERS, verdicts, strict=True)}
    record["orders"] = {o: v["orders"] for o, v in zip(OTHERS, verdicts, strict=True)}
    record["seconds"] = {
        "score_and_expected": middle - start,
        "pairwise": time.perf_counter() - middle,
    }
    return record


def summarize(records: list[dict[str, Any]], margin: float) -> list[str]:
    """A markdown table: per protocol, the candidates' means and the reference's wins."""
    lines = [
        f"{len(records)} entries; pairwise tie margin {margin:g} nats",
        "",
        "| protocol | mean reference | mean wrong | mean IDK | ref > wrong | ref > IDK |",
        "|---|---|---|---|---|---|",
    ]
    for protocol in ("score", "expected"):
        values = {c: [r[protocol][c] for r in records] for c in ("reference", *OTHERS)}
        means = [mean(values[c]) for c in ("reference", *OTHERS)]
        wins = [beats(values["reference"], values[o]) for o in OTHERS]
        lines.append(f"| {protocol} | " + " | ".join([*means, *wins]) + " |")
    wins = [f"{sum(r['pairwise'][o] > margin for r in records)}/{len(records)}" for o in OTHERS]
    lines.append("| pairwise | | | | " + " | ".join(wins) + " |")
    lines.append("")
    both_a = sum(all(d > 0 for d in r["orders"][o]) for r in records for o in OTHERS)
    lines.append(f"pairwise answers favouring 'A' in both orders: {both_a} of {2 * len(records)}")
    return lines


def mean(values: list[float | None]) -> str:
    usable = [v for v in values if v is not None]
    return f"{statistics.fmean(usable):.1f}" if usable else "n/a"


def beats(ref: list[float | None], other: list[float | None]) -> str:
    """How often the reference scored strictly higher; a missing score never counts as a win."""
    n = sum(a is not None and b is not None and a > b for a, b in zip(ref, other, strict=True))
    return f"{n}/{len(ref)}"


def time_score(judge: LocalJudge, entries: list[dict[str, str]], records: list[dict]) -> None:
    """The product's `score` protocol timed on the reference candidates, checked against the
    score read from the expected pass."""
    for r in records:
        entry = candidates(entries, r["index"])["reference"]
        start = time.perf_counter()
        got = judge_score(judge, [entry])[0]["score"]
        seconds = time.perf_counter() - start
        read = r["score"]["reference"]
        print(f"score protocol, entry {r['index']}: {seconds:.1f} s, {got} (from the pass: {read})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", default="qwen2.5-coder-1.5b")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--journal", type=Path, default=Path("judge_calibration.jsonl"))
    parser.add_argument("--margin", type=float, default=0.0, help="pairwise tie margin (nats)")
    parser.add_argument("--time-score", type=int, default=0, metavar="K")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        default=None,
        help="the judge's weights (none: bfloat16 where native, judge_dtype)",
    )
    parser.add_argument("--quantize", default="none", help="none, int8 or int4 (gptlab.load's)")
    args = parser.parse_args()
    entries = load_entries(None)
    done = {r["index"]: r for r in read_jsonl(args.journal) if isinstance(r, dict)}
    todo = [i for i in range(args.n) if i not in done]
    if todo or args.time_score:
        start = time.perf_counter()
        judge = load_judge(args.judge, args.device, args.dtype, args.quantize)
        print(f"judge loaded in {time.perf_counter() - start:.0f} s", flush=True)
        ready = [done[i] for i in sorted(done) if i < args.n]
        time_score(judge, entries, ready[: args.time_score])  # first: the entries already done
        for i in todo:
            done[i] = judge_entry(judge, entries, i)
            append_jsonl(args.journal, done[i])
            print(json.dumps(done[i]), flush=True)
    records = [done[i] for i in sorted(done) if i < args.n]
    print("\n".join(summarize(records, args.margin)))
    seconds = [sum(r["seconds"].values()) for r in records]
    print(
        f"seconds per entry (3 candidates, all protocols): median {statistics.median(seconds):.0f}"
    )


if __name__ == "__main__":
    main()
