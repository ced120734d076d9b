"""Training throughput with each speed flag on and off, so every flag's gain is measured.

For gpt2-small and gpt2-medium (random init), times optimizer steps of the training loop's
own pieces (gptlab.training: apply_speed_flags, make_optimizer, lm_loss; gptlab.device:
autocast, to_device) under a baseline (TrainConfig defaults) and with one flag flipped at a
time, and prints tokens/s, the ratio to the baseline and, on a known GPU, model FLOPs utilisation.

    PYTHONPATH=src python benchmarks/train_flags.py                  # CPU: short, small batch
    PYTHONPATH=src python benchmarks/train_flags.py --device cuda    # GPU: batch filling the card

On CPU, TF32, pinned memory and bf16 autocast do nothing and torch.compile's warm-up takes
minutes, so they run only on CUDA unless named with --variants.
"""

from __future__ import annotations

import argparse
import time

import torch

from gptlab.config import get_preset
from gptlab.device import autocast, peak_flops, to_device
from gptlab.model import GPT
from gptlab.training import (
    TrainConfig,
    apply_speed_flags,
    flops_per_token,
    lm_loss,
    make_optimizer,
)

# Variant name -> (TrainConfig changes, attention implementation).
VARIANTS: dict[str, tuple[dict[str, object], str]] = {
    "baseline": ({}, "sdpa"),
    "reference-attention": ({}, "reference"),
    "no-fused-adamw": ({"fused_adamw": False}, "sdpa"),
    "gradient-checkpointing": ({"gradient_checkpointing": True}, "sdpa"),
    "compile": ({"compile": True}, "sdpa"),
    "no-tf32": ({"tf32": False}, "sdpa"),
    "no-pin-memory": ({"pin_memory": False}, "sdpa"),
    "fp32": ({"precision": "fp32"}, "sdpa"),
}
GPU_ONLY = {"compile", "no-tf32", "no-pin-memory", "fp32"}


def tokens_per_s(
    preset: str, cfg: TrainConfig, attention: str, device: torch.device, batch: int, seq: int,
    warmup: int, steps: int,
) -> tuple[float, GPT]:  # fmt: skip
    torch.manual_seed(0)
    model = GPT(get_preset(preset).replace(context_length=seq)).to(device).train()
    model.set_attention(attention)  # type: ignore[arg-type]
    apply_speed_flags(model, cfg, device)
    if cfg.speed.compile:
        model.compile()
    opt = make_optimizer(model, cfg, device)
    vocab = model.cfg.vocab_size
    data = [torch.randint(0, vocab, (2, batch, seq + 1)) for _ in range(4)]
    elapsed = 0.0
    for i in range(warmup + steps):
        batch = (data[i % 4][0, :, :-1], data[i % 4][1, :, 1:])
        x, y = to_device(batch, device, cfg.speed.pin_memory)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device, cfg.precision):
            loss, _ = lm_loss(model, (x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        if i >= warmup:
            elapsed += time.perf_counter() - t0
    return batch * seq * steps / elapsed, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", default=["gpt2-small", "gpt2-medium"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    ap.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on GPU")
    ap.add_argument("--seq", type=int, default=None, help="default: 128 on CPU, 1024 on GPU")
    ap.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 5 on GPU")
    ap.add_argument("--steps", type=int, default=None, help="default: 3 on CPU, 20 on GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch, seq = args.batch or (16 if gpu else 2), args.seq or (1024 if gpu else 128)
    warmup, steps = args.warmup or (5 if gpu else 1), args.steps or (20 if gpu else 3)
    names = args.variants or [v for v in VARIANTS if gpu or v not in GPU_ONLY]
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; batch {batch} x {seq} tokens, {steps} timed steps after {warmup}")
    print(f"{'preset':<12} {'variant':<24} {'tokens/s':>10} {'vs baseline':>11} {'MFU':>6}")
    for preset in args.presets:
        base = None
        for name in names:
            changes, attention = VARIANTS[name]
            cfg = TrainConfig.of(max_steps=1, **changes)  # type: ignore[arg-type]
            try:
                tps, model = tokens_per_s(preset, cfg, attention, device, batch, seq, warmup, steps)
            except torch.OutOfMemoryError:
                print(f"{preset:<12} {name:<24} {'out of memory':>10}")
                continue
            base = base or tps
            peak = peak_flops(device, cfg.speed.peak_tflops)
            mfu = f"{tps * flops_per_token(model, seq) / peak:.1%}" if peak else "-"
            print(
                f"{preset:<12} {name:<24} {tps:>10,.0f} {tps / base:>10.2f}x {mfu:>6}", flush=True
            )
            del model
            if gpu:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
