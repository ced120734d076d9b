"""gptlab.quantize: each quantized layer against its dequantized float32 twin (error bounds
stated and asserted), the quantization error of the weights themselves, whole tiny models of
both families against float32, and greedy generation through quantized layers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import LlamaConfig
from gptlab.errors import GptlabError
from gptlab.generation import generate
from gptlab.llama import Llama
from gptlab.lora import LoRALinear, apply_lora
from gptlab.model import GPT
from gptlab.quantize import (
    MODES,
    DynamicInt8Linear,
    Int4Linear,
    Int8Linear,
    RescoredHead,
    dequantize_int4,
    pack_cpu,
    quantize_int4,
    quantize_int8,
    quantize_model,
    quantize_weight,
)
from gptlab.settings import Sampling

from .conftest import TINY

# (out, in) shapes: a GPT-2 block's, a SmolLM2 block's, a head whose rows are not a multiple
# of the int4 kernel's 16 (GPT-2's 50257), and one block of rows exactly.
SHAPES = [(96, 32), (192, 576), (50257, 64), (64, 96)]
TINY_LLAMA = LlamaConfig(
    vocab_size=320, context_length=64, emb_dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
    hidden_dim=128, rope_base=10000.0,
)  # fmt: skip


def layer_of(shape: tuple[int, int], bias: bool) -> nn.Linear:
    torch.manual_seed(sum(shape))
    layer = nn.Linear(shape[1], shape[0], bias=bias)
    nn.init.normal_(layer.weight, std=0.05)
    return layer


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["int8", "int4"])
@torch.no_grad()
def test_weight_only_layer_equals_its_twin_within_bfloat16_rounding(
    kind: str, shape: tuple[int, int], bias: bool
) -> None:
    """The weight-only layers multiply bfloat16 activations by exactly their dequantized
    weight: the only error is rounding x and the output to bfloat16, 2^-8 relative each, so
    |y - x w^T| <= 2^-7 sum_k |x_k| |w_nk| (+ float32 accumulation, 1e-6 here)."""
    base = layer_of(shape, bias)
    layer = quantize_weight(base.weight, base.bias, kind)
    assert type(layer) is {"int8": Int8Linear, "int4": Int4Linear}[kind]
    x = torch.randn(3, 5, shape[1])
    w = layer.dequantized()
    twin = F.linear(x, w, base.bias)
    y = layer(x)
    assert y.shape == twin.shape and y.dtype == torch.float32
    bound = 2**-7 * (x.abs() @ w.abs().t()) + 1e-6
    assert bool(((y - twin).abs() <= bound).all()), (y - twin).abs().max()


@pytest.mark.parametrize("shape", SHAPES[:2])
@torch.no_grad()
def test_dynamic_layer_equals_its_twin_within_activation_rounding(shape: tuple[int, int]) -> None:
    """int8-dynamic quantizes each call's activations to 7 bits over [min(x, 0), max(x, 0)]:
    each x_k moves by at most half a step a = range / 127, so
    |y - x w^T| <= a / 2 sum_k |w_nk| (+ 1e-5 for float32 accumulation)."""
    base = layer_of(shape, True)
    layer = DynamicInt8Linear(base.weight, base.bias)
    x = 3 * torch.randn(4, shape[1])
    w = layer.dequantized()
    twin = F.linear(x, w, base.bias)
    y = layer(x)
    step = (x.max().clamp_min(0) - x.min().clamp_max(0)) / 127
    bound = step / 2 * w.abs().sum(dim=1) + 1e-5
    assert bool(((y - twin).abs() <= bound).all())
    # and the twin is int8 per channel: at most half a step (max |w| / 127 per row) away
    step_w = base.weight.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((w - base.weight).abs() <= step_w / 2 + 1e-7).all())


def test_quantizers_are_within_half_a_step_of_the_weights() -> None:
    """int8: |w - q s| <= s / 2 + 2^-8 max|w| (the scale is rounded to bfloat16 first, which
    can clip the largest weight of a row by that much); int4: |w - ((q - 8) s + z)| <= s / 2 +
    2^-8 max|w| (the zero is rounded to bfloat16 too). Constant rows and groups are exact."""
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.05
    w[3] = 0.25  # a constant row: every group constant
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16
    err = (w - q.float() * s.float()[:, None]).abs()
    top = w.abs().amax(dim=1, keepdim=True)
    assert bool((err <= s.float()[:, None] / 2 + 2**-8 * top).all())
    q4, s4, z4 = quantize_int4(w, 32)
    assert q4.dtype == torch.uint8 and int(q4.max()) <= 15 and s4.shape == (64, 4)
    err4 = (w - dequantize_int4(q4, s4, z4, 32)).reshape(64, 4, 32).abs()
    assert bool((err4 <= s4.float()[..., None] / 2 + 2**-8 * top[..., None]).all())
    assert float(err4[3].max()) == 0.0


def test_int4_kernel_holds_exactly_the_codes_it_was_given() -> None:
    """The packed weight read back through the kernel is (q - 8) s + z of the codes, scales
    and zeros it was built from, to float32 rounding: packing (rows in blocks, the padding of
    a last partial block) loses nothing."""
    torch.manual_seed(1)
    n, k = 200, 64  # 200 rows: three whole blocks of 64 and a partial one, padded
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    s = (torch.rand(n, k // 32) + 0.01).to(torch.bfloat16)
    z = torch.randn(n, k // 32).to(torch.bfloat16)
    layer = Int4Linear(k, n, 32)
    layer.set_rows(0, q[:128], s[:128], z[:128])
    layer.set_rows(128, q[128:], s[128:], z[128:])
    want = dequantize_int4(q, s, z, 32)
    torch.testing.assert_close(layer.dequantized(), want, rtol=2**-22, atol=1e-6)
    with pytest.raises(ValueError, match="whole blocks"):
        layer.set_rows(32, q[:64], s[:64], z[:64])


@pytest.mark.parametrize(("n", "k"), [(64, 32), (128, 64), (192, 576), (576, 1536)])
def test_numpy_packing_is_the_kernels(n: int, k: int) -> None:
    """pack_cpu (numpy, on bytes) lays the codes out byte for byte as torch's own CPU
    conversion does, for every block and nibble."""
    torch.manual_seed(n + k)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    want = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert torch.equal(pack_cpu(q), want)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@torch.no_grad()
def test_head_rescores_its_best_logits_in_float32(mode: str) -> None:
    """A quantized head's rounded logits make near-ties (bfloat16 steps of 0.125 at 25); the
    RescoredHead gives every row's best candidates their float32 value, so greedy picks what
    the dequantized twin picks, exactly."""
    torch.manual_seed(3)
    base = nn.Linear(64, 4000, bias=False)
    nn.init.normal_(base.weight, std=0.5)
    head = quantize_weight(base.weight, None, mode, head=True)
    assert isinstance(head, RescoredHead)
    x = torch.randn(3, 64) * 4
    twin = x @ head.layer.dequantized().t()
    rounded, rescored = head.layer(x), head(x)
    assert bool((rounded != twin).any())  # the plain kernel's logits are rounded
    best = twin.argmax(dim=1)
    assert torch.equal(rescored.argmax(dim=1), best)
    torch.testing.assert_close(rescored.gather(1, best[:, None]), twin.gather(1, best[:, None]))


def tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    return (GPT(TINY) if family == "gpt2" else Llama(TINY_LLAMA)).eval()


# Relative RMS error of the logits, |quantized - float32| / |float32| over 2 x 16 tokens, as
# measured on these seeds (gpt2, llama): int8 0.0067, 0.0069; int4 0.087, 0.085; int8-dynamic
# 0.018, 0.020 (what the weights' own rounding predicts: int4's step is a group's range / 15,
# an RMS error of about 8% of a weight). Asserted with about 2x room.
LOGIT_BOUND = {"int8": 0.015, "int4": 0.15, "int8-dynamic": 0.04}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@torch.no_grad()
def test_whole_model_logits_near_float32(family: str, mode: str) -> None:
    model = tiny(family)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    want = model(idx)
    quantize_model(model, mode)
    for block in model.blocks:
        assert not any(type(m) is nn.Linear for m in block.modules())
    assert type(model.out_head) is not nn.Linear
    got = model(idx)
    rel = float((got - want).norm() / want.norm())
    print(f"{family} {mode}: relative RMS logit error {rel:.3g}")
    assert rel <= LOGIT_BOUND[mode]


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_greedy_generation_picks_the_quantized_models_best_tokens(mode: str) -> None:
    """Greedy generation (cache, batch of two prompts of different lengths) through quantized
    layers: every token it picked is, in one full uncached pass over the text, within the
    layers' rounding (1e-2 of a logit here) of the best."""
    model = quantize_model(tiny("llama"), mode)
    prompts = [[5, 17, 2, 99], [7, 3]]
    out = generate(model, prompts, Sampling(max_new_tokens=12, temperature=0.0, stop_ids=()))
    assert [len(row) for row in out] == [12, 12]
    for prompt, row in zip(prompts, out, strict=True):
        logits = model(torch.tensor([prompt + row[:-1]]))[0, len(prompt) - 1 :]
        picked = logits.gather(1, torch.tensor(row)[:, None])[:, 0]
        assert bool((picked >= logits.amax(dim=1) - 1e-2).all()), (picked, logits.amax(dim=1))


def test_lora_bases_are_quantized_and_adapters_kept() -> None:
    model = tiny("gpt2")
    apply_lora(model, rank=2, alpha=4.0)
    quantize_model(model, "int8")
    wrapped = model.blocks[0].attn.qkv
    assert isinstance(wrapped, LoRALinear) and isinstance(wrapped.base, Int8Linear)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, TINY.vocab_size)


def test_groups_that_do_not_fit_fall_back_to_int8(caplog: pytest.LogCaptureFixture) -> None:
    cfg = TINY.replace(emb_dim=48, n_heads=4)  # 48 inputs: not a multiple of 32
    model = GPT(cfg).eval()
    with caplog.at_level(logging.INFO, logger="gptlab"):
        quantize_model(model, "int4")
    assert isinstance(model.blocks[0].attn.qkv, Int8Linear)
    assert isinstance(model.blocks[0].ff.proj, Int4Linear)  # 192 inputs
    assert "int8, their inputs not a multiple of 32" in caplog.text


def test_bad_mode_and_group_size_are_one_line() -> None:
    with pytest.raises(GptlabError, match="unknown quantization 'int3'"):
        quantize_model(tiny("gpt2"), "int3")
    with pytest.raises(GptlabError, match="group size 48"):
        quantize_model(tiny("gpt2"), "int4", group_size=48)


def test_gpu_benchmark_smoke_path_runs() -> None:
    """benchmarks/gpu.py --smoke: every part of the GPU script on tiny shapes, on the CPU."""
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu.py"), "--smoke"],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "int4 on cpu: max error / bound" in out and "(ok)" in out
    assert "pretrain 2x64:" in out
    for mode in ("float32", "int4", "int8"):
        assert f"decode {mode:8s} batch 2:" in out
