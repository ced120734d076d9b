"""`gptlab finetune-instruct`: teach a GPT to follow Alpaca-style instructions."""

from __future__ import annotations

from gptlab import distributed
from gptlab.jobs.instruct import finetune_instruct
from gptlab.settings import InstructConfig


def run(c: InstructConfig, resume: bool) -> int:
    results = finetune_instruct(c, resume=resume)
    if distributed.env_rank() != 0:  # one summary, from rank 0
        return 0
    print(
        f"done: {results['steps']} steps, {results['tokens_seen']:,} tokens in "
        f"{results['train_seconds']:.0f} s; train loss {results['train_loss']:.3f}, "
        f"val loss {results['val_loss']:.3f}; padding {results['padding_fraction']:.1%}"
    )
    print(f"model: {results['model']}")
    print(
        f"test split: {results['test_data']}  (next: gptlab respond --model {c.out} "
        f"--data {results['test_data']} --out responses.json)"
    )
    return 0
