"""Loading a gpt2-xl-sized checkpoint: peak memory and time to the first forward pass.

Each measurement runs in a fresh Python process on the same random gpt2-xl-shaped weights
(1.56 B parameters, 6.2 GB fp32), from the start of loading to the end of one forward pass on
16 tokens, and reports the process's peak RSS (imports included) against the file size:

- gptlab:        `resolve_model(folder)` on gptlab's converted checkpoint (model.safetensors+config)
- gptlab-hf:     `resolve_model("…/model.safetensors")` reading Hugging Face's GPT-2 file directly
- transformers:  `GPT2LMHeadModel.from_pretrained(folder)` on that same HF file

Rounds interleave the three so that the page cache is equally warm for all; the table shows
the median time, the largest peak RSS, and ratios to transformers. `--cold` drops the page
cache before every run (needs root; it slows everything else on the machine for a while).

    PYTHONPATH=src python benchmarks/load_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("gptlab", "gptlab-hf", "transformers")


def write_safetensors(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], make: Callable[[int], Any]
) -> None:
    """Stream a safetensors file tensor by tensor (`make(i)` gives the i-th), so that writing
    6 GB never needs 6 GB of memory."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        n_bytes = 4 * math.prod(shape)
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i, (name, shape) in enumerate(tensors):
            value = make(i)
            assert tuple(value.shape) == shape, name
            f.write(memoryview(value.contiguous().numpy()).cast("B"))
    os.replace(tmp, path)


def make_checkpoints(work: Path) -> tuple[Path, Path]:
    """The same random gpt2-xl weights as a gptlab folder and as an HF GPT-2 folder."""
    import torch
    from transformers import GPT2Config

    from gptlab.config import get_preset
    from gptlab.formats.names import expected_shapes, parameter_names

    cfg = get_preset("gpt2-xl")
    names = parameter_names(cfg.n_layers)
    shapes = expected_shapes(cfg)
    ours, hf = work / "gptlab", work / "hf"

    def value(i: int) -> torch.Tensor:
        n = names[i]
        return torch.randn(shapes[n.gptlab], generator=torch.Generator().manual_seed(i)) * 0.02

    if not (ours / "config.json").is_file():
        ours.mkdir(parents=True, exist_ok=True)
        write_safetensors(
            ours / "model.safetensors",
            [(n.gptlab, shapes[n.gptlab]) for n in names],
            value,
        )
        model = {"format": "gptlab", "model": cfg.to_dict()}
        (ours / "config.json").write_text(json.dumps(model))
    if not (hf / "config.json").is_file():
        hf.mkdir(parents=True, exist_ok=True)
        write_safetensors(
            hf / "model.safetensors",
            [
                (
                    f"transformer.{n.hf}",
                    tuple(reversed(shapes[n.gptlab])) if n.conv else shapes[n.gptlab],
                )
                for n in names
            ],
            lambda i: value(i).t() if names[i].conv else value(i),
        )
        GPT2Config(n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads).save_pretrained(hf)
    return ours, hf


def measure(kind: str, work: Path) -> None:
    """Runs in the child process: load, one forward pass, print one JSON line."""
    t0 = time.perf_counter()
    import torch

    if kind == "transformers":
        from transformers import GPT2LMHeadModel
    else:
        from gptlab.hub import resolve_model
    imported = time.perf_counter()
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "transformers":
        model = GPT2LMHeadModel.from_pretrained(work / "hf").eval()
    elif kind == "gptlab-hf":
        model, _ = resolve_model(work / "hf" / "model.safetensors")
    else:
        model, _ = resolve_model(work / "gptlab")
    loaded = time.perf_counter()
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(idx)
        logits = logits.logits if hasattr(logits, "logits") else logits
    done = time.perf_counter()
    result = {
        "kind": kind,
        "import_s": imported - t0,
        "load_s": loaded - imported,
        "first_forward_s": done - imported,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_imports": rss_imports,
        "logit_sum": float(logits[0, -1].double().sum()),
    }
    print(json.dumps(result))


def run_child(kind: str, work: Path, cold: bool) -> dict[str, float]:
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    cmd = [sys.executable, __file__, "--measure", kind, "--work", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/gptlab-load-speed"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    p.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        measure(args.measure, args.work)
        return
    free = shutil.disk_usage(args.work.parent).free
    if not (args.work / "hf" / "config.json").is_file() and free < 14e9:
        sys.exit(f"{args.work.parent}: {free / 1e9:.1f} GB free, need 14 GB for two 6.2 GB files")
    t = time.perf_counter()
    ours, _ = make_checkpoints(args.work)
    print(f"checkpoints ready in {time.perf_counter() - t:.0f} s under {args.work}")
    size = (ours / "model.safetensors").stat().st_size
    cache = "cold" if args.cold else "warm"
    print(f"weights: {size / 1e9:.2f} GB; {os.cpu_count()} CPUs; page cache {cache}")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    if not args.cold:  # one untimed pass so that every file is in the page cache
        for kind in KINDS:
            run_child(kind, args.work, cold=False)
    for r in range(args.rounds):
        for kind in KINDS:
            runs[kind].append(run_child(kind, args.work, args.cold))
            print(f"round {r + 1} {kind}: {runs[kind][-1]['first_forward_s']:.2f} s", flush=True)
    sums = {round(runs[k][0]["logit_sum"], 2) for k in KINDS}
    print(f"same logits from all three: {len(sums) == 1} ({sums})")
    ref_t = statistics.median(x["first_forward_s"] for x in runs["transformers"])
    ref_m = max(x["peak_rss"] for x in runs["transformers"])
    print(
        f"\n{'':13} {'imports':>8} {'load':>7} {'to 1st fwd':>10} {'peak RSS':>9} {'RSS/size':>8} "
        f"{'time ratio':>10} {'RSS ratio':>9}"
    )
    for kind in KINDS:
        t_first = statistics.median(x["first_forward_s"] for x in runs[kind])
        t_load = statistics.median(x["load_s"] for x in runs[kind])
        t_imp = statistics.median(x["import_s"] for x in runs[kind])
        peak = max(x["peak_rss"] for x in runs[kind])
        print(
            f"{kind:13} {t_imp:7.2f}s {t_load:6.2f}s {t_first:9.2f}s {peak / 1e9:7.2f}GB "
            f"{peak / size:7.2f}x {t_first / ref_t:9.2f}x {peak / ref_m:8.2f}x"
        )


if __name__ == "__main__":
    main()
