"""CPU float32 decoding: the blocks' products on one BLAS thread, split over the threads, or
chosen by time per generation (gptlab.cpu.decode._Split, the default), against transformers.

One process, `--threads` torch threads, the four sides interleaved round by round (speed.py's
`interleaved`) on the same prompts, greedy, no stop: gpt2-small's shape with random weights
(batch 1 only) or SmolLM2-135M-Instruct from its Q4_1 GGUF file read to float32. The output
head's product is split over the threads on every side; the three gptlab sides give the same
tokens bit for bit.

    PYTHONPATH=src python benchmarks/decode_threads.py gpt2 --batch 1 --new 64 --reps 3
    PYTHONPATH=src python benchmarks/decode_threads.py smollm2 --batch 4 --new 32 --reps 3
"""

from __future__ import annotations

# First: speed.py applies gptlab's process memory settings before torch's first allocation.
from speed import interleaved, median_rate  # isort: split

import argparse
import os
import time
from collections.abc import Callable

import torch
from llama_speed import PROMPTS, SMOLLM2, gptlab_generate, transformers_generate

from gptlab import text
from gptlab.config import get_preset
from gptlab.cpu import decode
from gptlab.hub import resolve_with_tokenizer
from gptlab.model import GPT

ALWAYS = 32 * 2**20  # decode.SPLIT_BYTES: only the head is always split


def models(which: str) -> tuple[torch.nn.Module, torch.nn.Module, text.Tokenizer]:
    """(gptlab's, transformers', the tokenizer) for `which`."""
    if which == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        return (
            GPT(get_preset("gpt2-small")).eval(),
            GPT2LMHeadModel(GPT2Config()).eval(),
            text.gpt2(),
        )
    from transformers import AutoModelForCausalLM

    ours, _, tok = resolve_with_tokenizer(SMOLLM2)
    theirs = AutoModelForCausalLM.from_pretrained(
        SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    return ours, theirs, tok


def way(generate: Callable[[], object], kind: str) -> Callable[[], object]:
    """`generate` with the blocks' products on one thread ("one"), always split ("split"), or
    as each generation measures faster ("chosen")."""
    chosen = decode._Split.pick

    def run() -> object:
        decode.SPLIT_BYTES = 0 if kind == "split" else ALWAYS
        decode._Split.pick = (lambda self: False) if kind == "one" else chosen
        try:
            return generate()
        finally:
            decode._Split.pick, decode.SPLIT_BYTES = chosen, ALWAYS

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=("gpt2", "smollm2"))
    ap.add_argument("--batch", type=int, default=1, choices=(1, 2, 3, 4))
    ap.add_argument("--new", type=int, default=64, help="new tokens a row")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours, theirs, tok = models(args.model)
    prompts = [tok.encode(p) for p in PROMPTS[: args.batch]]
    generate = gptlab_generate(ours, tok, prompts, args.new)
    runs = {f"gptlab, {kind}": way(generate, kind) for kind in ("one", "split", "chosen")}
    runs["transformers"] = transformers_generate(theirs, tok, prompts, args.new)
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"{when}, load {os.getloadavg()[0]:.1f}, {args.model}, batch {args.batch}")
    first: dict[str, object] = {}
    times = interleaved(runs, args.reps, lambda: None, first)
    assert first["gptlab, one"] == first["gptlab, split"] == first["gptlab, chosen"]
    work = args.batch * args.new
    base = median_rate(times["transformers"], work)
    for name, samples in times.items():
        rate = median_rate(samples, work)
        each = ", ".join(f"{work / t:.1f}" for t in samples)
        print(f"{name:18s} {rate:6.1f} tok/s  x{rate / base:.2f} transformers  ({each})")
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
