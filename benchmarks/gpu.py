"""One GPU, nothing but the repository: pretraining and decode figures on random weights.

Prepared for a lent H100 (under 8 minutes there; no downloads, no files):

1. gpt2-small pretraining: AdamW (fused), bf16 autocast, random tokens of a 1024 context;
   tokens/s and MFU (6 N + 12 L d T flops a token, nanoGPT's count, against `--peak` TFLOP/s:
   989 for an H100 SXM's dense bf16);
2. decode of a SmolLM2-135M-shaped model (random weights): bf16, and
   gptlab.quantize's int4 (torch._weight_int4pack_mm) and int8 (widened per call: torch has
   no CUDA int8 weight-only kernel), greedy, batch 1 and 8, tokens/s;
3. the int4 layer against its dequantized twin on the device (the CUDA packing convention,
   untested on a CPU-only machine, is checked here): max error / bound.

`--smoke` runs every part on tiny shapes on whatever device there is (CPU here), in seconds:
the path the tests take.

    PYTHONPATH=src python benchmarks/gpu.py            # on one GPU
    PYTHONPATH=src python benchmarks/gpu.py --smoke    # anywhere, seconds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from gptlab.config import PRESETS, GPTConfig, LlamaConfig, get_preset
from gptlab.generation import generate
from gptlab.llama import Llama
from gptlab.model import GPT
from gptlab.quantize import quantize_model, quantize_weight
from gptlab.settings import Sampling

TINY_GPT = GPTConfig(vocab_size=512, context_length=64, emb_dim=64, n_layers=2, n_heads=4)
TINY_LLAMA = LlamaConfig(
    vocab_size=512, context_length=128, emb_dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
    hidden_dim=128, rope_base=10000.0,
)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def pretrain(cfg: GPTConfig, batch: int, steps: int, device: torch.device, peak: float) -> None:
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = model(x[:, :-1], targets=x[:, 1:]) / x[:, 1:].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    seconds = timed(lambda: [step() for _ in range(steps)], device)
    tokens = steps * batch * cfg.context_length / seconds
    n = model.num_params()
    flops = 6 * n + 12 * cfg.n_layers * cfg.emb_dim * cfg.context_length
    print(
        f"pretrain {cfg.n_layers}x{cfg.emb_dim}: {tokens:,.0f} tokens/s, "
        f"MFU {100 * tokens * flops / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s"
    )


def decode(cfg: LlamaConfig, new: int, batches: tuple[int, ...], device: torch.device) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for mode in ("none", "int4", "int8"):
        torch.manual_seed(0)
        model = Llama(cfg).to(device=device, dtype=dtype).eval()
        if mode != "none":
            quantize_model(model, mode)
        for b in batches:
            prompts = [list(range(1 + r, 17 + r)) for r in range(b)]
            s = Sampling(max_new_tokens=new, temperature=0.0, stop_ids=())
            generate(model, prompts, s)  # warm-up
            seconds = timed(lambda m=model, p=prompts, s=s: generate(m, p, s), device)
            label = {"none": str(dtype).removeprefix("torch."), "int4": "int4", "int8": "int8"}
            print(f"decode {label[mode]:8s} batch {b}: {b * new / seconds:8.1f} tokens/s")


def int4_check(device: torch.device) -> None:
    """The int4 layer against its dequantized twin on `device`: the error over the bound of
    the bfloat16 rounding of activations and output (2^-7 sum |x| |w|); at most 1 is right."""
    torch.manual_seed(0)
    w = torch.randn(512, 576, device=device) * 0.05
    layer = quantize_weight(w, None, "int4")
    x = torch.randn(4, 576, device=device, dtype=torch.bfloat16)
    twin = layer.dequantized()
    want = x.float() @ twin.t()
    bound = 2**-7 * (x.float().abs() @ twin.abs().t()) + 1e-3
    ratio = float(((layer(x).float() - want).abs() / bound).max())
    print(
        f"int4 on {device.type}: max error / bound {ratio:.3f} ({'ok' if ratio <= 1 else 'WRONG'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, any device, seconds")
    ap.add_argument("--peak", type=float, default=989.0, help="the GPU's dense bf16 TFLOP/s")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("gpu.py: no GPU here; --smoke runs the tiny version on the CPU")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__}")
    int4_check(device)
    if args.smoke:
        pretrain(TINY_GPT, batch=2, steps=2, device=device, peak=args.peak)
        decode(TINY_LLAMA, new=4, batches=(1, 2), device=device)
        return
    pretrain(get_preset("gpt2-small"), batch=16, steps=30, device=device, peak=args.peak)
    decode(PRESETS["smollm2-135m"].replace(context_length=2048), 128, (1, 8), device)


if __name__ == "__main__":
    main()
