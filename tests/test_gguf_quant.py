"""gptlab.formats.gguf_quant: a GGUF file's Q4_0 / Q4_1 / Q4_K / Q8_0 blocks used as they are.
The codes read with numpy give back gguf's own dequantization; the packed int4 layers hold the
file's weights within the bfloat16 rounding of their scales (stated and asserted); other types
are requantized and the load says so; the real SmolLM2 Q4_1 file's logits stay near
transformers' float32 reading of it, and it answers Paris."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, quants
from torch import nn

from gptlab import text
from gptlab.formats.gguf import read_gguf, read_gguf_metadata, unpermute_rotary
from gptlab.formats.gguf_quant import (
    MAPPED,
    GGUFEmbedding,
    load_gguf_quantized,
    q4_0,
    q4_1,
    q4_k,
    q8_0,
)
from gptlab.formats.llama_names import from_hf, parameter_names
from gptlab.generation import generate_text
from gptlab.quantize import Int4Linear, RescoredHead, dequantize_int4
from gptlab.settings import Sampling
from tests.test_gguf import LLAMA3, QWEN3, TEXTS, TYPES, TYPES_QWEN, write_file
from tests.test_llama import hf_model

DECODERS = {"Q4_0": q4_0, "Q4_1": q4_1, "Q4_K": q4_k, "Q8_0": q8_0}


def folded(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, repeat: int) -> torch.Tensor:
    """The float32 weight behind int4 codes, its `repeat` parts (Q8_0's halves) summed."""
    w = dequantize_int4(q, s, z, 32)
    return w.view(w.shape[0], repeat, -1).sum(dim=1)


def bf16_bound(s: torch.Tensor, z: torch.Tensor, repeat: int) -> torch.Tensor:
    """Per weight, how far rounding scale and zero to bfloat16 may move it: 2^-8 (8 |s| + |z|)
    per part, plus float32 rounding."""
    per_group = 2**-8 * (8 * s.abs() + z.abs()) + 1e-7
    per_weight = per_group.repeat_interleave(32, dim=1)
    return per_weight.view(s.shape[0], repeat, -1).sum(dim=1)


def check_layer(layer: nn.Module, want: torch.Tensor, tensor, heads: int | None) -> None:
    """`layer` (an Int4Linear, or a head around one) holds `want` (gguf's dequantization)
    within the bfloat16 rounding of the file's scales, read back through the kernel."""
    layer = getattr(layer, "layer", layer)
    assert isinstance(layer, Int4Linear)
    decode, repeat = MAPPED[tensor.tensor_type.name]
    raw = tensor.data.reshape(want.shape[0], -1)
    if heads is not None:
        raw = raw[unpermute_rotary(torch.arange(raw.shape[0]), heads).numpy()]
    _, s, z = (torch.from_numpy(a) for a in decode(raw))
    got = layer.dequantized()
    assert bool(((got - want).abs() <= bf16_bound(s, z, repeat)).all())


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_codes_give_back_ggufs_dequantization(kind: str) -> None:
    """(q - 8) s + z from the numpy decoding equals gguf's own dequantization of the same
    bytes to float32 rounding (a few units in the last place of 8 |s| + |z|)."""
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(0)
    qtype = Q[kind]
    size = quants.GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, (16, 4 * size), dtype=np.uint8)  # 16 rows of 4 blocks
    for offset in {"Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2), "Q8_0": (0,)}[kind]:
        raw.reshape(16, 4, size)[..., offset : offset + 2] = np.frombuffer(
            np.float16(0.01).tobytes(), np.uint8
        )
    want = torch.from_numpy(quants.dequantize(raw, qtype).reshape(16, -1))
    q, s, z = (torch.from_numpy(a) for a in DECODERS[kind](raw))
    repeat = MAPPED[kind][1]
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and q.shape[1] == repeat * want.shape[1]
    bound = 2**-20 * (8 * s.abs() + z.abs()).repeat_interleave(32, dim=1)
    got = folded(q, s, z, repeat)
    assert bool(((got - want).abs() <= bound.view(16, repeat, -1).sum(dim=1)).all())


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@torch.no_grad()
def test_written_file_layers_hold_the_files_weights(
    tmp_path: Path, arch: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of every kind of block (llama.cpp's row order for Llama's q and k): each
    mapped layer holds gguf's dequantization within the bfloat16 rounding of its scales, the
    others are requantized and the load names their types, and the logits stay near those of
    the float32 reading."""
    cfg = LLAMA3 if arch == "llama" else QWEN3
    torch.manual_seed(0)
    state = {k: v.detach() for k, v in hf_model(cfg).state_dict().items()}
    path = tmp_path / f"tiny-{arch}.gguf"
    write_file(path, cfg, from_hf(state, cfg), TYPES if arch == "llama" else TYPES_QWEN, arch)
    with caplog.at_level(logging.INFO, logger="gptlab"):
        model, _ = load_gguf_quantized(path, "int4")
    fp32 = read_gguf(path)
    by_name = {t.name: t for t in GGUFReader(path).tensors}
    mapped = 0
    for n in parameter_names(cfg):
        tensor = by_name[n.gguf]
        if tensor.tensor_type.name not in MAPPED or n.gptlab == "tok_emb.weight":
            continue
        heads = None
        if arch == "llama" and ".attn_q." in n.gguf:
            heads = cfg.n_heads
        elif arch == "llama" and ".attn_k." in n.gguf:
            heads = cfg.n_kv_heads
        layer = model.get_submodule(n.gptlab[: -len(".weight")])
        check_layer(layer, fp32.tensors[n.gptlab], tensor, heads)
        mapped += 1
    assert mapped == 2 * (3 if arch == "llama" else 4)  # q, gate, up (llama); q, gate, up, down
    assert isinstance(model.tok_emb, GGUFEmbedding)
    requantized = (
        "2 Q5_K, 2 Q3_K, 2 Q2_K, 2 Q5_1, 1 BF16" if arch == "llama" else "1 F16, 2 Q5_0, 4 F32"
    )
    assert f"quantized to int4 (no 4-bit form): {requantized}" in caplog.text
    idx = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    want = build_fp32(fp32)(idx)
    rel = float((model(idx) - want).norm() / want.norm())
    print(f"{arch}: relative RMS logit error {rel:.3g}")
    assert rel < 0.3  # measured 0.14 (llama), 0.13 (qwen3): most layers requantized to int4


def build_fp32(read) -> nn.Module:
    from gptlab.formats.gguf import build_llama

    return build_llama(read.cfg, read.tensors)


@pytest.fixture(scope="module")
def smollm2_quantized(smollm2_file: Path):
    return load_gguf_quantized(smollm2_file, "int4")


@torch.no_grad()
def test_real_file_runs_on_its_own_blocks(smollm2_file: Path, smollm2_quantized) -> None:
    """SmolLM2's Q4_1 file: 210 Q4_1 layers and the Q8_0 head (tied to the embedding) packed
    from the file's codes, no float32 matrix anywhere, the embedding read from the map."""
    model, _ = smollm2_quantized
    floats = [
        name
        for name, t in [*model.named_parameters(), *model.named_buffers()]
        if t.is_floating_point() and t.dim() > 1 and "scales_zeros" not in name
    ]
    assert floats == []
    assert isinstance(model.out_head, RescoredHead) and model.out_head.layer.repeat == 2
    reader = GGUFReader(smollm2_file)
    by_name = {t.name: t for t in reader.tensors}
    emb = by_name["token_embd.weight"]
    base = model.tok_emb.raw  # a view of the memory-mapped file, not a copy of its rows
    while not isinstance(base, np.memmap):
        base = base.base
    assert Path(base.filename) == smollm2_file.resolve()
    ids = torch.tensor([[0, 17, 49151]])
    want = quants.dequantize(emb.data[[0, 17, 49151]], emb.tensor_type)
    assert torch.equal(model.tok_emb(ids)[0], torch.from_numpy(want))
    # one permuted Q4_1 projection whole, and the first 128 rows of the Q8_0 head
    q_want = unpermute_rotary(
        torch.from_numpy(
            quants.dequantize(by_name["blk.0.attn_q.weight"].data, quants.GGMLQuantizationType.Q4_1)
        ),
        model.cfg.n_heads,
    )
    check_layer(model.blocks[0].attn.q, q_want, by_name["blk.0.attn_q.weight"], model.cfg.n_heads)
    head = model.out_head.layer
    got = head.exact(torch.eye(576), torch.arange(128)).t()
    _, s, z = (torch.from_numpy(a) for a in q8_0(emb.data[:128]))
    want_head = torch.from_numpy(quants.dequantize(emb.data[:128], emb.tensor_type))
    assert bool(((got - want_head).abs() <= bf16_bound(s, z, 2)).all())


@pytest.fixture(scope="module")
def transformers_smollm2(smollm2_file: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_file.parent, smollm2_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), tok


@torch.no_grad()
def test_real_file_logits_near_transformers(smollm2_quantized, transformers_smollm2) -> None:
    """Against transformers' float32 reading of the same file: the differences are the
    bfloat16 rounding of activations, scales and outputs (the weights are the file's)."""
    model, _ = smollm2_quantized
    theirs, tok = transformers_smollm2
    worst, rel = 0.0, 0.0
    for t in TEXTS:
        ids = torch.tensor([tok(t)["input_ids"]])
        want = theirs(ids).logits
        got = model(ids)
        worst = max(worst, float((got - want).abs().max()))
        rel = max(rel, float((got - want).norm() / want.norm()))
        assert float((got.argmax(-1) == want.argmax(-1)).float().mean()) >= 0.9
    print(f"SmolLM2 Q4_1 on int4: max |logit difference| {worst:.3g}, relative RMS {rel:.3g}")
    assert rel < 0.03 and worst < 1.5  # measured 0.0145 and 0.80 (docs/quantize.md)


def test_real_file_greedy_answer_is_paris(smollm2_file: Path, smollm2_quantized) -> None:
    model, meta = smollm2_quantized
    tok = text.from_gguf_metadata(meta, source=smollm2_file)
    prompt = tok.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    s = Sampling(max_new_tokens=24, temperature=0.0)
    (answer,) = generate_text(model, [prompt], s, tokenizer=tok)
    print(repr(answer))
    assert "Paris" in answer
    assert read_gguf_metadata(smollm2_file)["general.architecture"] == "llama"
