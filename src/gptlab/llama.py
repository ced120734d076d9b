"""The Llama family of decoders (Llama 3.x, SmolLM2, Qwen3), written out in full.

Token embeddings (no position embeddings: positions enter through rotary embeddings applied
to queries and keys), a stack of pre-RMSNorm transformer blocks (causal grouped-query
self-attention, then a SwiGLU feed-forward, each wrapped in a residual shortcut), a final
RMSNorm and an output head: the vocabulary, or `n_classes` for a classifier. Qwen3 is the same
network plus an RMSNorm on every query and key head (`qk_norm`) and a head size that need not
be emb_dim / n_heads.

The pieces, in the order a token meets them:

- Rotary embeddings (RoPE): each head's vector is split into two halves (x1, x2) and pair i,
  (x1[i], x2[i]), is rotated by the angle position * inv_freq[i], with
  inv_freq[i] = rope_base ** (-2i / head_dim). This "half split" is Hugging Face's layout;
  llama.cpp rotates adjacent pairs instead, which is why gptlab.formats.gguf reorders the
  rows of Llama's q and k weights. Llama 3.1+ stretches the low frequencies (long
  wavelengths) by `factor` and blends smoothly between `low_freq_factor` and
  `high_freq_factor` (see `rope_frequencies`).
- RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32 as the references do.
- Grouped-query attention: n_heads query heads share n_kv_heads key/value heads (each group
  of n_heads / n_kv_heads query heads reads the same keys and values); n_kv_heads == n_heads
  is plain multi-head attention. The KV cache (gptlab.model.KVCache, shared with GPT-2) stores
  only the n_kv_heads heads.
- SwiGLU feed-forward: down(silu(gate(x)) * up(x)), hidden_dim wide.

The model offers the interface of gptlab.model.GPT (cfg, tok_emb, blocks, final_norm,
out_head, gradient_checkpointing, head_loss, tied, hidden_states, forward, num_params,
set_attention), so that generation, training and LoRA can drive either one.

Parameter names: tok_emb, blocks.N.norm1, blocks.N.attn.{q,k,v,o}, blocks.N.attn.{q_norm,
k_norm} (Qwen3), blocks.N.norm2, blocks.N.ff.{gate,up,down}, final_norm, out_head;
gptlab.formats.llama_names maps them to Hugging Face's and GGUF's spellings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.model import AttentionImpl, Decoder, KVCache, reference_attention

# scaled_dot_product_attention shares key/value heads itself from torch 2.5 on (enable_gqa);
# before that the keys and values are repeated per query head.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's rotary frequency scaling ("rope_type": "llama3" in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise GptlabError(f"model config: rope_scaling.factor must be >= 1, got {self.factor}")
        if not 0.0 < self.low_freq_factor < self.high_freq_factor:
            raise GptlabError(
                "model config: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.original_context_length < 1:
            raise GptlabError(
                "model config: rope_scaling.original_context_length must be positive, got "
                f"{self.original_context_length}"
            )


@dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    """Everything that fixes the shape and behaviour of a Llama-family model.

    `head_dim` defaults to emb_dim // n_heads (Llama, SmolLM2); Qwen3 sets it explicitly
    (128 for emb_dim 1024 and 16 heads). `n_kv_heads` must divide `n_heads`.
    `attention_bias` adds biases to q, k, v and o (Hugging Face LlamaConfig.attention_bias).
    `n_classes` is None for a language model and the number of labels for a classifier.
    """

    vocab_size: int = 49152
    context_length: int = 2048
    emb_dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int | None = None
    hidden_dim: int = 1536
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_eps: float = 1e-5
    tie_weights: bool = True
    qk_norm: bool = False
    attention_bias: bool = False
    n_classes: int | None = None
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        if self.head_dim is None and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.emb_dim // self.n_heads)
        self._check_shared(
            (
                "vocab_size",
                "context_length",
                "emb_dim",
                "n_layers",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "hidden_dim",
            )
        )
        if self.n_heads % self.n_kv_heads:
            raise GptlabError(
                f"model config: n_heads {self.n_heads} is not a multiple of "
                f"n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise GptlabError(
                f"model config: head_dim must be even for rotary embeddings, got {self.head_dim}"
            )
        if self.rope_base <= 1.0:
            raise GptlabError(f"model config: rope_base must be > 1, got {self.rope_base}")
        if self.rms_eps <= 0.0:
            raise GptlabError(f"model config: rms_eps must be positive, got {self.rms_eps}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise GptlabError(
                f"model config: rope_scaling must be a mapping or None, got {self.rope_scaling!r}"
            )


def _rope_scaling(data: dict[str, Any]) -> RopeScaling:
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GptlabError(f"model config: unknown rope_scaling field(s): {', '.join(unknown)}")
    return RopeScaling(**data)


# Published shapes. Each line was read from the model's config.json on the Hugging Face Hub
# (as quoted in public code, found with the code search of this project's tooling; SmolLM2-135M
# also against the GGUF metadata of the file the tests load): hidden_size -> emb_dim,
# num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size ->
# hidden_dim, rope_theta -> rope_base, rope_scaling, rms_norm_eps, tie_word_embeddings,
# vocab_size, max_position_embeddings -> context_length.
_LLAMA3_32 = RopeScaling(32.0, 1.0, 4.0, 8192)  # Llama 3.2: "factor": 32.0
_LLAMA3_8 = RopeScaling(8.0, 1.0, 4.0, 8192)  # Llama 3.1: "factor": 8.0
_SMOLLM2 = dict(vocab_size=49152, context_length=8192, rms_eps=1e-5, tie_weights=True)
_LLAMA3 = dict(vocab_size=128256, context_length=131072, rope_base=500000.0, rms_eps=1e-5)
_QWEN3 = dict(
    vocab_size=151936,
    context_length=40960,
    head_dim=128,
    rope_base=1000000.0,
    rms_eps=1e-6,
    qk_norm=True,
)

PRESETS: dict[str, LlamaConfig] = {
    # HuggingFaceTB/SmolLM2-135M, -360M, -1.7B (LlamaForCausalLM)
    "smollm2-135m": LlamaConfig(
        **_SMOLLM2,
        emb_dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        hidden_dim=1536,
        rope_base=100000.0,
    ),
    "smollm2-360m": LlamaConfig(
        **_SMOLLM2,
        emb_dim=960,
        n_layers=32,
        n_heads=15,
        n_kv_heads=5,
        hidden_dim=2560,
        rope_base=100000.0,
    ),
    "smollm2-1.7b": LlamaConfig(
        **_SMOLLM2,
        emb_dim=2048,
        n_layers=24,
        n_heads=32,
        n_kv_heads=32,
        hidden_dim=8192,
        rope_base=130000.0,
    ),
    # meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B (LlamaForCausalLM, "rope_type": "llama3")
    "llama-3.2-1b": LlamaConfig(
        **_LLAMA3,
        emb_dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=8192,
        rope_scaling=_LLAMA3_32,
        tie_weights=True,
    ),
    "llama-3.2-3b": LlamaConfig(
        **_LLAMA3,
        emb_dim=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        hidden_dim=8192,
        rope_scaling=_LLAMA3_32,
        tie_weights=True,
    ),
    "llama-3.1-8b": LlamaConfig(
        **_LLAMA3,
        emb_dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=14336,
        rope_scaling=_LLAMA3_8,
        tie_weights=False,
    ),
    # Qwen/Qwen3-0.6B, -1.7B, -4B, -8B (Qwen3ForCausalLM; head_dim 128 throughout)
    "qwen3-0.6b": LlamaConfig(
        **_QWEN3,
        emb_dim=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        hidden_dim=3072,
        tie_weights=True,
    ),
    "qwen3-1.7b": LlamaConfig(
        **_QWEN3,
        emb_dim=2048,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        hidden_dim=6144,
        tie_weights=True,
    ),
    "qwen3-4b": LlamaConfig(
        **_QWEN3,
        emb_dim=2560,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=9728,
        tie_weights=True,
    ),
    "qwen3-8b": LlamaConfig(
        **_QWEN3,
        emb_dim=4096,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=12288,
        tie_weights=False,
    ),
    # From-scratch shapes for CPU experiments, on gptlab's GPT-2 tokenizer (~7M parameters,
    # like gpt-micro; most of them embeddings).
    "llama-micro": LlamaConfig(
        vocab_size=50257,
        context_length=256,
        emb_dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=384,
        rope_base=10000.0,
    ),
    "qwen3-micro": LlamaConfig(
        vocab_size=50257,
        context_length=256,
        emb_dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        hidden_dim=384,
        rope_base=1000000.0,
        rms_eps=1e-6,
        qk_norm=True,
    ),
}


def get_preset(name: str) -> LlamaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def rope_frequencies(cfg: LlamaConfig) -> torch.Tensor:
    """The rotary inverse frequencies (head_dim / 2,), float32 on the CPU, with Llama 3's
    scaling when the config has one.

    Llama 3 scaling, per frequency with wavelength w = 2 pi / inv_freq and L the original
    context length: keep it where w < L / high_freq_factor (high frequencies, short range),
    divide it by `factor` where w > L / low_freq_factor (low frequencies, long range), and in
    between blend the two linearly in L / w.
    """
    d = cfg.head_dim
    exponent = torch.arange(0, d, 2, dtype=torch.int64, device="cpu").float() / d
    inv_freq = 1.0 / (cfg.rope_base**exponent)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = s.original_context_length / s.low_freq_factor
    high_freq_wavelength = s.original_context_length / s.high_freq_factor
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / s.factor, inv_freq)
    smooth = (s.original_context_length / wavelength - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return torch.where(medium, blended, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate every head of x (B, H, T, head_dim) by the angles behind cos and signed_sin
    (B, 1, T, head_dim; Rotary's).

    Pair i of the two halves (x1, x2) becomes (x1 cos - x2 sin, x2 cos + x1 sin), which
    Hugging Face writes x * cos + cat(-x2, x1) * sin. Here the sign sits in `signed_sin`
    (-sin over the first half), so the swap of halves is one roll: the same numbers bit for
    bit, in one operation where chunk, neg and cat took three (a decode step runs this 60
    times for SmolLM2-135M)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Rotary:
    """cos and signed sin (see apply_rope) of the rotation angles for given positions. A plain
    object, not a module: its frequencies are derived from the config, stay float32 whatever
    dtype the model is cast to, and are not part of the state dict."""

    def __init__(self, cfg: LlamaConfig) -> None:
        self.inv_freq = rope_frequencies(cfg)

    def __call__(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos (B, T) or (1, T) -> cos, signed sin (B, 1, T, head_dim) in `dtype`."""
        if self.inv_freq.device != pos.device:
            self.inv_freq = self.inv_freq.to(pos.device)
        angles = pos[:, None, :, None].float() * self.inv_freq  # (B, 1, T, head_dim / 2)
        sin = angles.sin()
        cos = angles.cos()
        return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class GroupedQueryAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.groups = cfg.n_heads // cfg.n_kv_heads
        self.drop_rate = cfg.drop_rate
        bias = cfg.attention_bias
        self.q = nn.Linear(cfg.emb_dim, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.v = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.emb_dim, bias=bias)
        if cfg.qk_norm:  # Qwen3: one RMSNorm over head_dim, shared by all heads
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
        else:
            self.q_norm = self.k_norm = None
        self.attn_drop = nn.Dropout(cfg.drop_rate)
        self.resid_drop = nn.Dropout(cfg.drop_rate)
        self.impl: AttentionImpl = "sdpa"

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, signed_sin = rope
        q, k = apply_rope(q, cos, signed_sin), apply_rope(k, cos, signed_sin)
        if cache is not None:
            start, end = cache.length, cache.length + t
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        if self.impl == "sdpa":
            dropout = self.drop_rate if self.training else 0.0
            if self.groups > 1 and not _SDPA_GQA:
                k, v = self._repeat_kv(k), self._repeat_kv(v)
            extra = {"enable_gqa": True} if self.groups > 1 and _SDPA_GQA else {}
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, **extra
            )
        else:
            if mask is None and causal:
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = reference_attention(q, self._repeat_kv(k), self._repeat_kv(v), mask, self.attn_drop)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.resid_drop(self.o(y))

    def _repeat_kv(self, z: torch.Tensor) -> torch.Tensor:
        """(B, n_kv_heads, S, hd) -> (B, n_heads, S, hd): query head h reads kv head h // groups."""
        return z.repeat_interleave(self.groups, dim=1) if self.groups > 1 else z


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.silu(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.rms_eps)
        self.attn = GroupedQueryAttention(cfg)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.rms_eps)
        self.ff = SwiGLU(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, layer, mask, causal)
        return x + self.ff(self.norm2(x))


class Llama(Decoder):
    """The Llama-family decoder; everything around its layers (head, initialisation, loss
    seam, forward) is gptlab.model.Decoder's, shared with GPT-2."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.rms_eps)
        n_out = cfg.n_classes or cfg.vocab_size
        # The language-model head has no bias; a classifier head does (as in gptlab.model).
        self.out_head = nn.Linear(cfg.emb_dim, n_out, bias=cfg.n_classes is not None)
        self.rotary = Rotary(cfg)
        self._init_parameters(residual=("attn.o.weight", "ff.down.weight"))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        pos, mask, causal = self._positions(idx, cache)
        x = self.drop_emb(self.tok_emb(idx))
        return self._stack(x, cache, mask, causal, self.rotary(pos, x.dtype))
