"""`gptlab pretrain`: train a GPT from scratch on a text corpus."""

from __future__ import annotations

from gptlab import distributed
from gptlab.jobs.pretrain import pretrain
from gptlab.runs import SAMPLES
from gptlab.settings import PretrainConfig


def run(c: PretrainConfig, resume: bool) -> int:
    result = pretrain(c, resume=resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"done: {result['steps']} steps, {result['tokens_seen']:,} tokens in "
        f"{result['train_seconds']:.0f} s; train loss {result['train_loss']:.3f}, "
        f"val loss {result['val_loss']:.3f}"
    )
    samples = c.out / SAMPLES
    if samples.exists():
        print("sample:", samples.read_text(encoding="utf-8").strip().splitlines()[-1])
    print(f"run folder: {c.out}")
    return 0
