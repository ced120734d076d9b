"""Instruction fine-tuning speed: padding saved by length grouping, and training tokens/s.

On the bundled data's 935-entry training split, in one process:
- the padding fraction of one epoch, plain shuffled batches (the book's) against
  length-grouped batches, for several batch sizes;
- training throughput in real (non-padding) input tokens per second, forward + loss + backward +
  AdamW step, for four setups measured in interleaved rounds (median of rounds):
    book       plain batches, logits at every position, then the cross-entropy (dense_loss)
    sparse     plain batches, logits only where a target is learned (gptlab.training.lm_loss)
    grouped    length-grouped batches + lm_loss
    masked     length-grouped batches + lm_loss + --mask-prompt
  and each one's ratio to `book`. All use the same model, seed and batches per round.

    python benchmarks/instruct_speed.py                       # gpt2-small shape
    python benchmarks/instruct_speed.py --preset gpt-micro --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from itertools import islice

import torch
import torch.nn.functional as F

from gptlab.config import get_preset
from gptlab.cpu import head_loss
from gptlab.data import ResumableBatches
from gptlab.instructions import (
    InstructionDataset,
    LengthGroupedBatches,
    collate,
    load_entries,
    padding_fraction,
    split_entries,
)
from gptlab.model import GPT
from gptlab.tokenizer import EOT_ID
from gptlab.training import LossFn, TrainConfig, lm_loss, make_optimizer


def dense_loss(model: GPT, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The book's loss: logits at every position, padding ignored only by the cross-entropy."""
    x, y = batch
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    return loss, int((y != -100).sum())


def padding_table(ds: InstructionDataset, lengths: list[int], seed: int) -> None:
    print("padding fraction of one epoch (935 training entries)")
    print(f"{'batch':>6} {'plain':>8} {'grouped':>8} {'padding saved':>14}")
    for b in (4, 8, 16, 32):
        plain = padding_fraction(ResumableBatches(ds, b, True, seed).epoch_batches(0), lengths)
        grouped_batches = LengthGroupedBatches(ds, lengths, b, seed).epoch_batches(0)
        grouped = padding_fraction(grouped_batches, lengths)
        print(f"{b:>6} {plain:>8.1%} {grouped:>8.1%} {1 - grouped / plain:>14.1%}")


def run_steps(
    model: GPT,
    batches: ResumableBatches,
    loss_fn: LossFn,
    steps: int,
    start: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, float]:
    """(real tokens, seconds on `clock`) of `steps` training steps from batch `start`."""
    opt = make_optimizer(model, TrainConfig.of(max_steps=1, lr=5e-5), torch.device("cpu"))
    data = list(islice(batches.iterate(start), steps))
    # Entry text never holds the end-of-text id, so every one in the inputs is padding.
    real = sum(int((x != EOT_ID).sum()) for x, _ in data)
    t0 = clock()
    for batch in data:
        loss, _ = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return real, clock() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="steps per setup and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, steadier on a machine shared with other jobs",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, _, _ = split_entries(load_entries(None), args.seed)
    ds = InstructionDataset(train)
    cfg = get_preset(args.preset).replace(drop_rate=0.0)
    lengths = ds.lengths(cfg.context_length)
    padding_table(ds, lengths, args.seed)

    full = partial(collate, max_length=cfg.context_length)
    masked = partial(collate, max_length=cfg.context_length, mask_prompt=True)
    b, seed = args.batch_size, args.seed
    setups: dict[str, tuple[ResumableBatches, LossFn]] = {
        "book": (ResumableBatches(ds, b, True, seed, collate_fn=full), dense_loss),
        "sparse": (ResumableBatches(ds, b, True, seed, collate_fn=full), lm_loss),
        "grouped": (LengthGroupedBatches(ds, lengths, b, seed, collate_fn=full), lm_loss),
        "masked": (LengthGroupedBatches(ds, lengths, b, seed, collate_fn=masked), lm_loss),
    }
    torch.manual_seed(seed)
    model = GPT(cfg).train()
    head_loss.install(model)  # as gptlab's train() does
    run_steps(model, *setups["book"], steps=2, start=0)  # warm-up
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rates: dict[str, list[float]] = {name: [] for name in setups}
    # Every setup sees the same batch positions in a round; the model keeps training, which
    # does not change the cost of a step.
    for r in range(args.rounds):
        for name, (batches, loss_fn) in setups.items():
            real, seconds = run_steps(
                model, batches, loss_fn, args.steps, start=r * args.steps, clock=clock
            )
            rates[name].append(real / seconds)
    print(
        f"\ntraining, {args.preset} shape, batch {b}, {args.steps} steps x {args.rounds} rounds, "
        f"{args.threads} threads; real (non-padding) tokens per {args.clock} second, median"
    )
    base = statistics.median(rates["book"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:>8} {rate:>10,.0f} tok/s  x{rate / base:.2f}")


if __name__ == "__main__":
    main()
