"""prepare-data against single-process tiktoken `encode_ordinary_batch` on the same text.

Generates English-like text of each size (see `sentence_pool`; seeded, in 10 MB files), then
times (a) the baseline: read every file and `encode_ordinary_batch` them in this process,
and (b) `prepare_data` end to end: read, tokenize in worker processes, write shards and
manifest. Prints MB/s, CPU seconds, the ratio of wall times, and the 1-minute load average
(this machine may be shared).

    PYTHONPATH=src python benchmarks/prepare_data.py --sizes 10 100 1000
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

from gptlab.data import bundled
from gptlab.io import read_utf8
from gptlab.shards import prepare_data
from gptlab.tokenizer import get_tokenizer

FILE_MB = 10


def sentence_pool(rng: random.Random, n: int = 100_000) -> list[str]:
    """Sentences of the short story's words, 30% of them spliced with another word so that the
    vocabulary is large (about 140,000 distinct words) and BPE does real merging work."""
    with bundled("the-verdict.txt") as p:
        words = read_utf8(p).split()

    def word() -> str:
        w = rng.choice(words)
        if rng.random() < 0.3:
            other = rng.choice(words)
            return w[: max(1, len(w) // 2)] + other[len(other) // 2 :]
        return w

    return [" ".join(word() for _ in range(rng.randint(6, 20))) + "." for _ in range(n)]


def generate(folder: Path, size_mb: int, seed: int = 0) -> None:
    """`size_mb` MB of paragraphs in files of FILE_MB MB."""
    rng = random.Random(seed)
    pool = sentence_pool(rng)
    left = size_mb << 20
    i = 0
    while left > 0:
        target = min(left, FILE_MB << 20)
        parts, n = [], 0
        while n < target:
            para = " ".join(rng.choices(pool, k=rng.randint(2, 8))) + "\n\n"
            parts.append(para)
            n += len(para)
        text = "".join(parts)
        (folder / f"doc-{i:04d}.txt").write_text(text, encoding="utf-8")
        left -= len(text.encode())
        i += 1


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a busy shared machine the wall
    clock also counts other people's work, this does not."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def baseline(folder: Path) -> tuple[float, float, int]:
    t0, c0 = time.perf_counter(), cpu_seconds()
    texts = [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))]
    ids = get_tokenizer().encode_ordinary_batch(texts)
    return time.perf_counter() - t0, cpu_seconds() - c0, sum(map(len, ids)) + len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="MB of text")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    get_tokenizer()  # both sides start with the tokenizer loaded
    print(
        f"{'size':>7} {'baseline s':>10} {'MB/s':>6} {'cpu s':>6} "
        f"{'prepare s':>9} {'MB/s':>6} {'cpu s':>6} {'ratio':>6}  os load"
    )
    for size in args.sizes:
        tmp = Path(tempfile.mkdtemp(prefix="gptlab-bench-"))
        try:
            src = tmp / "text"
            src.mkdir()
            generate(src, size)
            mb = sum(p.stat().st_size for p in src.iterdir()) / (1 << 20)
            t_base, c_base, n_base = baseline(src)
            t0, c0 = time.perf_counter(), cpu_seconds()
            m = prepare_data(src, tmp / "shards", workers=args.workers, progress=False)
            t_prep, c_prep = time.perf_counter() - t0, cpu_seconds() - c0
            assert m["total_tokens"] == n_base, (m["total_tokens"], n_base)
            print(
                f"{size:>5}MB {t_base:>10.2f} {mb / t_base:>6.1f} {c_base:>6.1f} "
                f"{t_prep:>9.2f} {mb / t_prep:>6.1f} {c_prep:>6.1f} {t_base / t_prep:>5.2f}x"
                f"  {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
