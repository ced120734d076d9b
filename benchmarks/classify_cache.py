"""Cached frozen prefix vs the plain loop, for classification fine-tuning, in one process.

Both runs fine-tune the same base on the same SMS spam data with the same seed (last block,
final norm and head trainable, no dropout): the plain loop runs the whole model every step; the
cached one runs the frozen blocks once per text and trains the last block on their output.
Prints the wall time of each, the speed-up, and whether the test metrics agree.

    PYTHONPATH=src python benchmarks/classify_cache.py                      # full data, 5 epochs
    PYTHONPATH=src python benchmarks/classify_cache.py --subset 200 --epochs 2

`--base` defaults to random weights of the gpt2-small shape (the same cost as the pretrained
model); pass `--base gpt2-small` where OpenAI's weights are available.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from gptlab.jobs.classify import finetune_classifier
from gptlab.labelled import balance, load_sms_spam
from gptlab.settings import ClassifierConfig


def write_subset(n: int | None, seed: int, path: Path) -> None:
    """The balanced SMS data (or a seeded subset of `n` texts of it) as label<TAB>text."""
    data = load_sms_spam()
    kept, _ = balance(data.examples, seed)
    if n is not None:
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
        kept = [kept[i] for i in order[:n].tolist()]
    lines = [f"{data.labels[label]}\t{text}" for text, label in kept]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="random")
    p.add_argument("--preset", default="gpt2-small", help="shape for --base random")
    p.add_argument("--subset", type=int, default=None, help="use N balanced texts (default all)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sms.tsv"
        write_subset(args.subset, args.seed, data)
        for cached in (False, True):
            cfg = ClassifierConfig.flat(
                out=Path(tmp) / ("cached" if cached else "plain"),
                base=args.base,
                preset=args.preset,
                data=data,
                labels=("ham", "spam"),
                balance=False,
                epochs=args.epochs,
                batch_size=args.batch_size,
                cache_prefix=cached,
                seed=args.seed,
                device="cpu",
            )
            results[cached] = finetune_classifier(cfg)
    plain, cached = results[False], results[True]
    print(
        f"data: {plain['n_train']} train / {plain['n_val']} val / {plain['n_test']} test texts, "
        f"{args.epochs} epochs, base {args.base} ({args.preset} shape)"
    )
    for name, r in (("plain loop", plain), ("cached prefix", cached)):
        print(
            f"{name:>14}: {r['wall_seconds']:8.1f} s wall ({r['train_seconds']:.1f} s in "
            f"optimizer steps), test acc {r['test_accuracy']:.4f}, f1 {r['f1']:.4f}, "
            f"best val acc {r['best_val_accuracy']:.4f}"
        )
    print(f"speed-up (wall): {plain['wall_seconds'] / cached['wall_seconds']:.2f}x")
    keys = ("test_accuracy", "precision", "recall", "f1", "best_val_accuracy")
    same = all(abs(plain[k] - cached[k]) < 1e-6 for k in keys)
    same = same and plain["confusion_matrix"] == cached["confusion_matrix"]
    print(f"metrics match: {same}")


if __name__ == "__main__":
    main()
