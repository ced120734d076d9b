"""Continuous batching over a shared prefix (gptlab.batch_generation) against fixed batches
(gptlab.generation.generate, prompts sorted by length, `--batch` at a time: how `gptlab bench`
generated GSM8K before), on the first N GSM8K prompts, in one process: seconds each, the
ratio, and whether every output is equal.

    PYTHONPATH=src python benchmarks/gen_batching.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --n 32 --data-dir bench-data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gptlab.batch_generation import generate_all
from gptlab.bench import Options, load_docs, plan
from gptlab.generation import generate, tokenizer_sampling
from gptlab.llm import load
from gptlab.settings import Sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=32, help="GSM8K prompts")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=8, help="fixed batches' size")
    ap.add_argument("--slots", type=int, default=16, help="continuous batching's slots")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    llm = load(args.model, device="cpu")
    run = plan(["gsm8k"], 0)[0]
    docs, _, _ = load_docs(run, args.n, Options(data_dir=args.data_dir, progress=False))
    tok = llm.tokenizer
    prompts = [tok.encode(d.prompt) for d in docs]
    s = tokenizer_sampling(
        Sampling(max_new_tokens=args.max_new_tokens, stop_strings=run.task.extra["stop"]), tok
    )
    start = time.perf_counter()
    slots = generate_all(llm.model, prompts, s, tok, args.slots)
    t_slots = time.perf_counter() - start
    start = time.perf_counter()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    fixed: list[list[int]] = [[] for _ in prompts]
    for at in range(0, len(order), args.batch):
        rows = order[at : at + args.batch]
        outs = generate(llm.model, [prompts[i] for i in rows], s, tokenizer=tok)
        for i, out in zip(rows, outs, strict=True):
            fixed[i] = out
    t_fixed = time.perf_counter() - start
    tokens = sum(len(o) for o in slots)
    equal = sum(a == b for a, b in zip(slots, fixed, strict=True))
    print(f"{len(prompts)} GSM8K prompts, {tokens} tokens generated")
    print(f"continuous batching ({args.slots} slots): {t_slots:.1f} s")
    print(f"fixed batches of {args.batch}: {t_fixed:.1f} s")
    print(f"ratio {t_fixed / t_slots:.2f}x; outputs equal {equal}/{len(prompts)}")


if __name__ == "__main__":
    main()
