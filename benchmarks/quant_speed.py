"""CPU speed of quantized inference: SmolLM2-135M-Instruct from its Q4_1 GGUF file, greedy.

Four sides in one process, interleaved round by round (speed.py's `interleaved`), on the same
prompt token ids, no stop, `--threads` threads:

- gptlab int4: the file's own blocks (gptlab.formats.gguf_quant.load_gguf_quantized);
- gptlab int8: the file read to float32, then gptlab.quantize.quantize_model(..., "int8");
- gptlab fp32: the file read to float32 (gptlab.formats.gguf.load_gguf), as today;
- transformers fp32: LlamaForCausalLM.generate on its own float32 reading of the file.

Batch 1 and batch 4 (left-padded prompts of different lengths): tokens/s of whole generations
of `--new` tokens a row, and prefill tokens/s (a generation of one token: the prompt's
forward pass and the head); ratios against transformers and against gptlab fp32. Then, each
in a fresh process: seconds from the interpreter's start to the first generated token, and
peak resident memory above a process that imports torch and gptlab and loads nothing, for the
int4 and fp32 loads and for the command `gptlab generate --quantize int4` itself; `--src`
times other source trees (an older checkout) in the same rounds.

    PYTHONPATH=src python benchmarks/quant_speed.py                  # ~5 minutes, quiet machine
    PYTHONPATH=src python benchmarks/quant_speed.py --reps 1 --new 16
    PYTHONPATH=src python benchmarks/quant_speed.py --start-only --rounds 3 --src OLD/src --src src
"""

from __future__ import annotations

# First: speed.py applies gptlab's process memory settings before torch's first allocation.
from speed import interleaved, median_rate  # isort: split

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llama_speed import PROMPTS, SMOLLM2, gptlab_generate, transformers_generate

from gptlab import text
from gptlab.formats.gguf import load_gguf, read_gguf_metadata
from gptlab.formats.gguf_quant import load_gguf_quantized
from gptlab.quantize import quantize_model

LOADERS: dict[str, Callable[[Path], torch.nn.Module]] = {
    "gptlab int4": lambda p: load_gguf_quantized(p, "int4")[0],
    "gptlab int8": lambda p: quantize_model(load_gguf(p), "int8"),
    "gptlab fp32": load_gguf,
}

# One fresh process: start -> load -> first token; prints the time of the first token and
# its peak RSS (VmHWM: a child's ru_maxrss starts at its parent's on Linux, this one does not).
CHILD = """
import time, sys
from gptlab.cpu.memory import tune_process_memory
tune_process_memory()
import torch, gptlab.generation, gptlab.formats.gguf_quant, gptlab.text, gptlab.settings
torch.set_num_threads({threads})
side, path = sys.argv[1], sys.argv[2]
if side != "baseline":
    from gptlab.formats.gguf import load_gguf, read_gguf
    if side == "int4":
        model, meta = gptlab.formats.gguf_quant.load_gguf_quantized(path, "int4")
    else:
        cfg, tensors, meta = read_gguf(path)
        from gptlab.formats.gguf import build_llama
        model = build_llama(cfg, tensors)
    tok = gptlab.text.from_gguf_metadata(meta, source=path)
    s = gptlab.settings.Sampling(max_new_tokens=1, stop_ids=())
    gptlab.generation.generate(model, [tok.encode("The capital of France is")], s, tokenizer=tok)
first = time.time()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(first, int(hwm.split()[1]) * 1024)  # the peak resident size since exec
"""
# The command itself: `gptlab generate --quantize int4`, one new token; prints as CHILD does
# (on stderr: stdout holds the generated text) when it has returned.
COMMAND = """
import sys, time
from gptlab.cli import main
try:
    main(["generate", "--model", sys.argv[2], "--prompt", "The capital of France is",
          "--quantize", "int4", "--max-new-tokens", "1", "--no-stop"])
except SystemExit as exc:
    if exc.code:
        raise
first = time.time()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(first, int(hwm.split()[1]) * 1024, file=sys.stderr)
"""
SIDES = ("baseline", "int4", "fp32", "gptlab generate --quantize int4")


def runs(path: Path, n_new: int) -> dict[str, Callable[[], list[list[int]]]]:
    """Every side's generation of `n_new` tokens a row and its prefill, at batch 1 and 4."""
    from transformers import AutoModelForCausalLM

    tok = text.from_gguf_metadata(read_gguf_metadata(path), source=path)
    models = {name: load(path) for name, load in LOADERS.items()}
    theirs = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    out: dict[str, Callable[[], list[list[int]]]] = {}
    for b in (1, 4):
        prompts = [tok.encode(p) for p in PROMPTS[:b]]
        for new, kind in ((n_new, "generate"), (1, "prefill")):
            for name, model in models.items():
                out[f"{name}, batch {b}, {kind}"] = gptlab_generate(model, tok, prompts, new)
            key = f"transformers fp32, batch {b}, {kind}"
            out[key] = transformers_generate(theirs, tok, prompts, new)
    return out


def report(times: dict[str, list[float]], path: Path, n_new: int) -> None:
    tok = text.from_gguf_metadata(read_gguf_metadata(path), source=path)
    for b in (1, 4):
        prompt_tokens = sum(len(tok.encode(p)) for p in PROMPTS[:b])
        for kind, work in (("generate", b * n_new), ("prefill", prompt_tokens)):
            rates = {
                name: median_rate(times[f"{name}, batch {b}, {kind}"], work)
                for name in [*LOADERS, "transformers fp32"]
            }
            for name, rate in rates.items():
                print(
                    f"batch {b} {kind:8s} {name:18s} {rate:7.1f} tok/s   "
                    f"x{rate / rates['transformers fp32']:.2f} transformers   "
                    f"x{rate / rates['gptlab fp32']:.2f} gptlab fp32"
                )


def start_once(path: Path, threads: int, side: str, src: Path) -> tuple[float, int] | None:
    """(seconds from the process's start to its first token, peak RSS) of one fresh process
    running `side` with the gptlab of `src`; None where that gptlab cannot run it."""
    command = side.startswith("gptlab")
    code = COMMAND if command else CHILD.format(threads=threads)
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.time()
    cmd = [sys.executable, "-c", code, side, str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        return None
    first, peak = (done.stderr if command else done.stdout).split()[-2:]
    return float(first) - start, int(peak)


def start_and_memory(path: Path, threads: int, sources: list[Path], rounds: int) -> None:
    """Seconds to the first token (median) and peak RSS above the baseline (largest), each
    in a fresh process, the sources and sides interleaved round by round."""
    seen: dict[tuple[Path, str], list[tuple[float, int]]] = {}
    for _ in range(rounds):
        for src in sources:
            for side in SIDES:
                result = start_once(path, threads, side, src)
                if result is not None:
                    seen.setdefault((src, side), []).append(result)
    for src in sources:
        base = max(peak for _, peak in seen[(src, "baseline")])
        imports = statistics.median(t for t, _ in seen[(src, "baseline")])
        print(f"{src}: baseline (torch and gptlab imported, nothing loaded): {imports:.2f} s")
        for side in SIDES[1:]:
            if (src, side) not in seen:
                print(f"{src}: {side}: not available")
                continue
            seconds = statistics.median(t for t, _ in seen[(src, side)])
            extra = (max(p for _, p in seen[(src, side)]) - base) / 2**20
            print(f"{src}: {side}: first token {seconds:.2f} s; peak RSS +{extra:.0f} MB")
    print(f"file size {path.stat().st_size / 2**20:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=64, help="new tokens a row")
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--start-only", action="store_true", help="only start-up and memory")
    ap.add_argument("--rounds", type=int, default=1, help="start-up rounds")
    ap.add_argument(
        "--src",
        type=Path,
        action="append",
        help="a gptlab source tree to time start-up with (repeatable; default: this one's)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"{when}, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    if not args.start_only:
        times = interleaved(runs(args.model, args.new), args.reps, lambda: None)
        report(times, args.model, args.new)
    sources = args.src or [Path(__file__).resolve().parents[1] / "src"]
    start_and_memory(args.model, args.threads, sources, args.rounds)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
