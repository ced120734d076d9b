"""The from-scratch proof: an SMS spam classifier from random weights on a CPU.

Runs the command a user would run,

    gptlab finetune-classifier --base random --preset gpt-micro --pretrain-on-texts \
        --trainable all --lr 3e-4 --out RUN

(next-token pretraining on the in-domain training text, then fine-tuning every layer), and
prints the test accuracy on the 300 held-out messages and the wall time, against the targets
(>= 95% in < 15 minutes). Extra arguments are passed on to the command.

    PYTHONPATH=src python benchmarks/spam_from_scratch.py --out /tmp/spam-scratch
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from gptlab.cli import main

DEFAULT_ARGS = [
    "--base", "random",
    "--preset", "gpt-micro",
    "--pretrain-on-texts",
    "--trainable", "all",
    "--lr", "3e-4",
]  # fmt: skip


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/spam-from-scratch"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args, extra = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shutil.rmtree(args.out, ignore_errors=True)
    command = ["finetune-classifier", *DEFAULT_ARGS, *extra, "--out", str(args.out)]
    print("gptlab", " ".join(command), flush=True)
    start = time.perf_counter()
    status = main(command)
    wall = time.perf_counter() - start
    if status:
        return status
    results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    acc = results["test_accuracy"]
    print(f"test accuracy: {acc:.4f} on {results['n_test']} held-out messages (target >= 0.95)")
    print(f"wall time: {wall:.0f} s = {wall / 60:.1f} min (target < 15 min)")
    pre = json.loads((args.out / "pretrain" / "results.json").read_text(encoding="utf-8"))
    print(
        f"of which pretraining steps {pre['train_seconds']:.0f} s ({pre['tokens_seen']:,} tokens,"
        f" val loss {pre['val_loss']:.2f}), fine-tuning steps {results['train_seconds']:.0f} s"
    )
    print(
        f"precision {results['precision']:.4f}, recall {results['recall']:.4f}, "
        f"f1 {results['f1']:.4f}, confusion {results['confusion_matrix']}"
    )
    print("targets met" if acc >= 0.95 and wall < 900 else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(run())
