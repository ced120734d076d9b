"""Start-up time of the command line against `python -c "import torch"`, in one run.

`gptlab --help` and `gptlab VERB --help` build only the chosen verb's parser from its settings
class and import neither torch, FastAPI nor matplotlib, so they should start in a fraction of
torch's import time. Each command runs as a fresh process, interleaved, `--reps` times; the
medians and their ratio to torch's import are printed.

    python benchmarks/startup.py            # from the repository root
    python benchmarks/startup.py --reps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMANDS = {
    "gptlab --help": [sys.executable, "-m", "gptlab", "--help"],
    "gptlab generate --help": [sys.executable, "-m", "gptlab", "generate", "--help"],
    "gptlab pretrain --help": [sys.executable, "-m", "gptlab", "pretrain", "--help"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    'python -c "pass"': [sys.executable, "-c", "pass"],
}


def wall(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": SRC}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for cmd in COMMANDS.values():  # warm the page cache once
        wall(cmd)
    for _ in range(args.reps):
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    torch_s = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'max s':>7} {'vs import torch':>16}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {med:>9.3f} {min(ts):>7.3f} {max(ts):>7.3f} {med / torch_s:>15.2f}x")


if __name__ == "__main__":
    main()
