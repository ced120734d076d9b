import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.config import PRESETS, GPTConfig, get_preset
from gptlab.errors import GptlabError
from gptlab.model import GPT, KVCache

from .conftest import TINY


def test_shapes_and_tied_head(tiny_model: GPT) -> None:
    idx = torch.randint(0, TINY.vocab_size, (3, 10))
    assert tiny_model(idx).shape == (3, 10, TINY.vocab_size)
    assert tiny_model(idx, last_only=True).shape == (3, 1, TINY.vocab_size)
    assert tiny_model.out_head.weight is tiny_model.tok_emb.weight


@pytest.mark.parametrize(
    ("name", "millions"),
    [("gpt2-small", 124.44), ("gpt2-medium", 354.82), ("gpt2-large", 774.03), ("gpt2-xl", 1557.61)],
)
def test_preset_parameter_counts_match_openai(name: str, millions: float) -> None:
    with torch.device("meta"):
        model = GPT(get_preset(name))
    assert model.num_params() / 1e6 == pytest.approx(millions, abs=0.01)


def test_untied_and_classifier_heads() -> None:
    untied = GPT(TINY.replace(tie_weights=False))
    assert untied.out_head.weight is not untied.tok_emb.weight
    clf = GPT(TINY.replace(n_classes=3))
    assert clf(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 3)


def test_causality(tiny_model: GPT) -> None:
    a = torch.randint(0, 1000, (1, 12))
    b = a.clone()
    b[0, 7:] = torch.randint(1000, 2000, (5,))
    la, lb = tiny_model(a), tiny_model(b)
    torch.testing.assert_close(la[:, :7], lb[:, :7])
    assert not torch.allclose(la[:, 7:], lb[:, 7:])


def test_sdpa_equals_reference_attention() -> None:
    torch.manual_seed(1)
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (2, 20))
    fast = model(idx)
    model.set_attention("reference")
    ref = model(idx)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_reference_attention_is_spelled_out(tiny_model: GPT) -> None:
    """The reference path against attention computed here by hand for one layer."""
    attn = tiny_model.blocks[0].attn
    attn.impl = "reference"
    x = torch.randn(1, 5, TINY.emb_dim)
    q, k, v = attn.qkv(x).split(TINY.emb_dim, dim=2)
    hd = TINY.head_dim
    outs = []
    for h in range(TINY.n_heads):
        qh, kh, vh = (z[0, :, h * hd : (h + 1) * hd] for z in (q, k, v))
        scores = qh @ kh.T / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), -math.inf)
        outs.append(torch.softmax(scores, -1) @ vh)
    expected = attn.proj(torch.cat(outs, dim=-1))[None]
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_kv_cache_matches_full_forward(tiny_model: GPT, impl: str) -> None:
    tiny_model.set_attention(impl)  # type: ignore[arg-type]
    idx = torch.randint(0, 50257, (2, 16))
    full = tiny_model(idx)
    cache = KVCache(TINY, 2, TINY.context_length, "cpu", torch.float32)
    parts = [tiny_model(idx[:, :9], cache=cache)]  # a multi-token prompt first
    parts += [tiny_model(idx[:, i : i + 1], cache=cache) for i in range(9, 13)]
    parts.append(tiny_model(idx[:, 13:], cache=cache))  # several tokens after a prefix
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_rows_equal_unpadded(tiny_model: GPT) -> None:
    short = torch.randint(0, 50257, (1, 5))
    long = torch.randint(0, 50257, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    cache = KVCache(TINY, 2, TINY.context_length, "cpu", torch.float32, torch.tensor([4, 0]))
    out = tiny_model(batch, cache=cache)
    step = tiny_model(torch.tensor([[7], [8]]), cache=cache)
    alone = tiny_model(torch.cat([short, torch.tensor([[7]])], 1))
    torch.testing.assert_close(out[0, 4:], alone[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, 0], alone[0, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], tiny_model(long)[0], atol=1e-5, rtol=1e-5)


def test_sequence_longer_than_context_is_refused(tiny_model: GPT) -> None:
    with pytest.raises(ValueError, match="exceeds context"):
        tiny_model(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


def test_config_validation_and_presets() -> None:
    with pytest.raises(GptlabError, match="not divisible"):
        GPTConfig(emb_dim=10, n_heads=3)
    with pytest.raises(GptlabError, match="unknown preset 'gpt5'"):
        get_preset("gpt5")
    with pytest.raises(GptlabError, match="unknown model config field"):
        GPTConfig.from_dict({"emb_dims": 4})
    assert GPTConfig.from_dict(PRESETS["gpt-mini"].to_dict()) == PRESETS["gpt-mini"]


def test_dropout_is_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = GPT(TINY.replace(drop_rate=0.5))
    idx = torch.randint(0, 50257, (1, 8))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))


def test_forward_with_targets_is_the_summed_loss(tiny_model: GPT) -> None:
    x = torch.randint(0, TINY.vocab_size, (2, 8))
    y = torch.randint(0, TINY.vocab_size, (2, 8))
    logits = tiny_model(x)
    want = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    torch.testing.assert_close(tiny_model(x, targets=y), want)


def test_weights_are_contiguous_and_files_round_trip_any_layout(tmp_path) -> None:
    """Built and loaded models hold contiguous weights (what fused AdamW and FSDP need); a
    model holding a transposed view (as a Hugging Face file gives) saves contiguous tensors
    and loads back to the same outputs."""
    from gptlab.checkpoints import load_model_folder, read_safetensors, save_model

    torch.manual_seed(0)
    model = GPT(TINY)
    assert all(p.is_contiguous() for p in model.parameters())
    w = model.blocks[0].attn.qkv.weight
    w.data = w.data.t().contiguous().t()
    save_model(model, tmp_path / "m")
    saved = read_safetensors(tmp_path / "m" / "model.safetensors")
    assert all(t.is_contiguous() for t in saved.values())
    loaded, _ = load_model_folder(tmp_path / "m")
    assert all(p.is_contiguous() for p in loaded.parameters())
    x = torch.randint(0, TINY.vocab_size, (2, 8))
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
