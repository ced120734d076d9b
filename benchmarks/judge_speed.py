"""How long the in-process judge takes over a responses file, against llama.cpp on the same
prompts, in one script: gptlab's `expected` protocol (judge_local.judge_expected, batches of
4 as `gptlab evaluate` runs it) and llama.cpp's greedy reply to the same token ids (the
`score` protocol as a llama.cpp server answers it, its prompt cache reusing the beginning the
prompts share). Loading is timed apart. Also prints how often llama.cpp's greedy score equals
the one greedy decoding gives in gptlab's pass.

llama.cpp runs in the venv scripts/check_llama_cpp.sh --build makes (llama-cpp-python 0.3.36
built from its sdist), through benchmarks/llama_cpp_judge_worker.py.

    PYTHONPATH=src python benchmarks/judge_speed.py --responses runs/first/respond/responses.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from gptlab.judge import load_responses, parse_score, score_prompt
from gptlab.judge_local import judge_expected, load_judge
from gptlab.judge_model import judge_spec

BATCH = 4
VENV = Path.home() / ".cache" / "gptlab-llama-cpp" / "venv" / "bin" / "python"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b")
    ap.add_argument("--responses", type=Path, required=True)
    ap.add_argument("--llama-python", type=Path, default=VENV)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = judge_spec(args.judge)
    entries = load_responses(args.responses)
    start = time.perf_counter()
    judge = load_judge(str(path), "cpu")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    records = [
        r
        for i in range(0, len(entries), BATCH)
        for r in judge_expected(judge, entries[i : i + BATCH])
    ]
    ours = time.perf_counter() - start
    prompts = [judge.chat_ids(score_prompt(e)) for e in entries]
    job = {
        "path": str(path),
        "n_ctx": max(len(p) for p in prompts) + 16,
        "threads": args.threads,
        "prompts": prompts,
        "end_id": judge.fmt.end_id,
        "max_new": 8,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    worker = Path(__file__).with_name("llama_cpp_judge_worker.py")
    done = subprocess.run(
        [str(args.llama_python), str(worker), f.name], capture_output=True, text=True, check=True
    )
    theirs = json.loads(done.stdout)
    scores = [parse_score(judge.llm.tokenizer.decode(r)) for r in theirs["replies"]]
    same = sum(s == r["greedy"] for s, r in zip(scores, records, strict=True))
    print(f"{len(entries)} responses, judge {args.judge} ({judge.weights} in gptlab)")
    print(
        f"gptlab expected: {ours:.1f} s ({ours / len(entries):.2f} s each), loading {loaded:.1f} s"
    )
    print(
        f"llama.cpp greedy score: {theirs['seconds']:.1f} s, loading {theirs['load_seconds']:.1f} s"
    )
    print(f"ratio llama.cpp / gptlab: {theirs['seconds'] / ours:.2f}")
    print(f"greedy scores equal: {same}/{len(entries)}; llama.cpp unparsed: {scores.count(None)}")


if __name__ == "__main__":
    main()
