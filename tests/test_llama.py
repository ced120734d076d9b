"""gptlab.llama against Hugging Face's own Llama, Qwen2 and Qwen3 (transformers, as a reference
only): tiny random models with the same weights give the same logits; the KV cache (one token at a
time, left-padded batches too) gives what the uncached pass gives; configs check themselves."""

from __future__ import annotations

import pytest
import torch
import transformers

from gptlab.config import LlamaConfig, RopeScaling, get_preset
from gptlab.config.llama import PRESETS
from gptlab.errors import GptlabError
from gptlab.formats.llama_names import expected_shapes, from_hf, parameter_names, to_hf
from gptlab.llama import Llama, rope_frequencies
from gptlab.model import IGNORE_INDEX, KVCache

# Llama 3 scaling with a short original context so that a head of 16 has frequencies in all
# three regimes: wavelength 6.3 (< 64 / 4: kept), 32 (blended), 167 and up (> 64: divided).
SCALED = RopeScaling(
    factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context_length=64
)
BASE = dict(vocab_size=97, context_length=128, emb_dim=64, n_layers=2, hidden_dim=96)

CONFIGS = {
    # Llama 3: GQA (4 query heads on 2 kv heads), scaled rope, separate head
    "llama3-untied": LlamaConfig(
        **BASE, n_heads=4, n_kv_heads=2, rope_base=500000.0, rope_scaling=SCALED, tie_weights=False
    ),
    # SmolLM2-like: tied, 1 kv head for 4 query heads, plain rope
    "llama-tied-mqa": LlamaConfig(**BASE, n_heads=4, n_kv_heads=1, rope_base=100000.0),
    # Llama with biases on q, k, v, o (attention_bias)
    "llama-bias": LlamaConfig(
        **BASE, n_heads=4, n_kv_heads=4, attention_bias=True, rope_scaling=SCALED
    ),
    # Qwen3: head_dim 32 != 64 / 4, q/k RMSNorm, tied
    "qwen3-tied": LlamaConfig(
        **BASE, n_heads=4, n_kv_heads=2, head_dim=32, qk_norm=True, rope_base=1e6, rms_eps=1e-6
    ),
    # Qwen2 / Qwen2.5: biases on q, k and v only; tied, then untied
    "qwen2-tied": LlamaConfig(
        **BASE, n_heads=4, n_kv_heads=2, qkv_bias=True, rope_base=1e6, rms_eps=1e-6
    ),
    "qwen2-untied": LlamaConfig(
        **BASE, n_heads=8, n_kv_heads=2, qkv_bias=True, rope_base=1e6, tie_weights=False
    ),
    "qwen3-untied": LlamaConfig(
        **BASE,
        n_heads=8,
        n_kv_heads=2,
        head_dim=16,
        qk_norm=True,
        rope_base=1e6,
        rms_eps=1e-6,
        tie_weights=False,
    ),
}


def hf_model(cfg: LlamaConfig) -> torch.nn.Module:
    """The same shape built by transformers, randomly initialised (norm weights too, so a
    misplaced norm cannot hide behind all-ones weights)."""
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.emb_dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context_length,
        rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=cfg.tie_weights,
        attn_implementation="eager",
    )
    if not cfg.qkv_bias:  # Qwen2Config has no such field: its q, k, v always have biases
        common["attention_bias"] = cfg.attention_bias
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {
            "rope_type": "llama3",
            "rope_theta": cfg.rope_base,
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_context_length,
        }
    if not hasattr(transformers.LlamaConfig(), "rope_parameters"):  # transformers 4.x
        theta = rope.pop("rope_theta")
        rope = {"rope_theta": theta, "rope_scaling": rope if len(rope) > 1 else None}
    else:
        rope = {"rope_parameters": rope}
    if cfg.qk_norm:
        config = transformers.Qwen3Config(**common, **rope)
        model = transformers.Qwen3ForCausalLM(config)
    elif cfg.qkv_bias:
        config = transformers.Qwen2Config(**common, **rope)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common, **rope)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def gptlab_from(hf: torch.nn.Module, cfg: LlamaConfig) -> Llama:
    model = Llama(cfg).eval()
    state = from_hf(hf.state_dict(), cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert missing == (["out_head.weight"] if model.tied else [])
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request: pytest.FixtureRequest) -> tuple[LlamaConfig, torch.nn.Module, Llama]:
    cfg = CONFIGS[request.param]
    torch.manual_seed(0)
    hf = hf_model(cfg)
    return cfg, hf, gptlab_from(hf, cfg)


@torch.no_grad()
def test_logits_match_transformers(pair) -> None:
    cfg, hf, model = pair
    idx = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    theirs = hf(idx).logits
    for impl in ("sdpa", "reference"):
        model.set_attention(impl)
        ours = model(idx)
        assert ours.shape == theirs.shape == (3, 40, cfg.vocab_size)
        assert (ours - theirs).abs().max().item() < 1e-4, impl
    model.set_attention("sdpa")
    assert model.tied == cfg.tie_weights
    assert model.num_params() == sum(p.numel() for p in hf.parameters())


def test_rope_frequencies_match_transformers(pair) -> None:
    cfg, hf, _ = pair
    theirs = hf.model.rotary_emb.inv_freq
    assert torch.allclose(rope_frequencies(cfg), theirs, rtol=1e-6, atol=0)
    if cfg.rope_scaling is not None:  # all three regimes: kept, blended, divided by 4
        ratio = rope_frequencies(cfg.replace(rope_scaling=None)) / theirs
        kept, divided = ratio == 1.0, torch.isclose(ratio, torch.tensor(4.0))
        blended = (ratio > 1.0) & (ratio < 4.0) & ~divided
        assert kept.any() and blended.any() and divided.any()
        assert bool((kept | blended | divided).all())


@torch.no_grad()
def test_cache_one_token_at_a_time_equals_full_pass(pair) -> None:
    cfg, _, model = pair
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = KVCache(cfg, 2, 32, "cpu", torch.float32)
    assert cache.k.shape == (cfg.n_layers, 2, cfg.n_kv_heads, 32, cfg.head_dim)
    prefix = model(idx[:, :5], cache)  # a prompt, then one token at a time
    steps = [model(idx[:, t : t + 1], cache) for t in range(5, 20)]
    cached = torch.cat([prefix, *steps], dim=1)
    assert (cached - full).abs().max().item() < 1e-5
    assert cache.length == 20


def check_left_padding(cfg, model, lengths: list[int], new: int) -> None:
    """A left-padded batch, prompt then one token at a time through the cache, gives each
    row's logits as that row alone does (both attention paths)."""
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lengths]
    width = max(lengths)
    n_pad = torch.tensor([width - n for n in lengths])
    batch = torch.stack([torch.cat([torch.full((width - len(r),), 7), r]) for r in rows])
    follow = torch.randint(0, cfg.vocab_size, (len(rows), new), generator=g)
    for impl in ("sdpa", "reference"):
        model.set_attention(impl)
        cache = KVCache(cfg, len(rows), width + new, "cpu", torch.float32, n_pad)
        first = model(batch, cache, last_only=True)
        steps = [model(follow[:, t : t + 1], cache) for t in range(new)]
        for b, row in enumerate(rows):
            alone = model(torch.cat([row, follow[b]])[None])
            got = torch.cat([first[b], *(s[b] for s in steps)])
            want = alone[0, len(row) - 1 :]
            assert (got - want).abs().max().item() < 1e-5, (impl, b)
    model.set_attention("sdpa")


@torch.no_grad()
def test_cache_with_left_padding_equals_each_row_alone(pair) -> None:
    cfg, _, model = pair
    check_left_padding(cfg, model, [9, 4, 6], 6)


def test_loss_select_and_training_step() -> None:
    cfg = CONFIGS["qwen3-tied"]
    torch.manual_seed(0)
    model = Llama(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    targets = idx.roll(-1, 1)
    targets[:, -1] = IGNORE_INDEX
    logits = model(idx)
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets[:, :-1].flatten(), reduction="sum"
    )
    loss = model(idx, targets=targets)
    assert torch.allclose(loss, want, atol=1e-4)
    selected = model(idx, select=torch.tensor([3, 7]))
    assert torch.allclose(selected, logits[[0, 1], [3, 7]], atol=1e-6)
    assert torch.allclose(model(idx, last_only=True), logits[:, -1:], atol=1e-6)
    loss.backward()  # every parameter learns, the tied head through tok_emb
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    model.gradient_checkpointing = True
    model.train()
    model(idx, targets=targets).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_classifier_head() -> None:
    cfg = CONFIGS["llama-tied-mqa"].replace(n_classes=3)
    model = Llama(cfg).eval()
    assert not model.tied and model.out_head.bias is not None
    out = model(torch.randint(0, cfg.vocab_size, (2, 5)), select=torch.tensor([4, 2]))
    assert out.shape == (2, 3)


def test_config_checks_and_round_trip() -> None:
    cfg = CONFIGS["llama3-untied"]
    data = cfg.to_dict()
    assert data["rope_scaling"] == {
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 64,
    }
    assert data["head_dim"] == 16
    assert LlamaConfig.from_dict(data) == cfg
    assert LlamaConfig.from_dict({**data, "rope_scaling": None}).rope_scaling is None
    with pytest.raises(GptlabError, match="unknown model config field"):
        LlamaConfig.from_dict({**data, "n_embd": 3})
    with pytest.raises(GptlabError, match="unknown rope_scaling field"):
        LlamaConfig.from_dict({**data, "rope_scaling": {"rope_type": "llama3"}})
    bad = [
        (dict(n_heads=6, n_kv_heads=4), "n_kv_heads"),
        (dict(head_dim=15), "even"),
        (dict(n_layers=0), "n_layers"),
        (dict(rms_eps=0.0), "rms_eps"),
        (dict(drop_rate=1.0), "drop_rate"),
        (dict(n_classes=1), "n_classes"),
        (dict(rope_scaling={"factor": 0.5}), "factor"),
    ]
    for changes, word in bad:
        with pytest.raises(GptlabError, match=word) as info:
            cfg.replace(**changes)
        assert "\n" not in str(info.value)
    with pytest.raises(GptlabError, match="high_freq_factor"):
        RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)
    with pytest.raises(GptlabError, match="unknown preset"):
        get_preset("llama-9")


def test_name_mapping_round_trip_and_shapes() -> None:
    for cfg in CONFIGS.values():
        names = parameter_names(cfg)
        shapes = expected_shapes(cfg)
        ours = {n.gptlab for n in names}
        assert ours == set(shapes) - ({"out_head.weight"} if cfg.tie_weights else set())
        assert len({n.hf for n in names}) == len({n.gguf for n in names}) == len(names)
        state = {k: torch.randn(s) for k, s in shapes.items()}
        back = from_hf(to_hf(state, cfg), cfg)
        assert all(torch.equal(back[k], state[k]) for k in back)


# Parameter counts published with the models (tied heads counted once).
PUBLISHED = {
    "smollm2-135m": 134_515_008,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
}


def test_presets() -> None:
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = Llama(cfg)
        n = model.num_params()
        if name in PUBLISHED:
            assert n == PUBLISHED[name], name
        assert cfg.n_heads % cfg.n_kv_heads == 0
        assert cfg.qk_norm == name.startswith("qwen3"), name
        assert cfg.qkv_bias == name.startswith("qwen2"), name
    assert PRESETS["qwen3-0.6b"].head_dim == 128 != 1024 // 16
    assert PRESETS["llama-3.1-8b"].rope_scaling.factor == 8.0
    with torch.device("meta"):
        micro = Llama(PRESETS["llama-micro"])
    assert 5e6 < micro.num_params() < 10e6
