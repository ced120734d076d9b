"""The Llama family of decoders (Llama 3.x, SmolLM2, Qwen2/Qwen2.5, Qwen3), written out in full.

Token embeddings (no position embeddings: positions enter through rotary embeddings applied
to queries and keys), a stack of pre-RMSNorm transformer blocks (causal grouped-query
self-attention, then a SwiGLU feed-forward, each wrapped in a residual shortcut), a final
RMSNorm and an output head: the vocabulary, or `n_classes` for a classifier. Qwen3 is the same
network plus an RMSNorm on every query and key head (`qk_norm`) and a head size that need not
be emb_dim / n_heads; Qwen2 is the same network with biases on the q, k and v projections
(`qkv_bias`).

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

`Llama` is a gptlab.model.Decoder, as GPT-2 is, so that generation, training and LoRA drive
either one. Its config and presets (gptlab.config.llama) import no torch.

Parameter names: tok_emb, blocks.N.norm1, blocks.N.attn.{q,k,v,o}, blocks.N.attn.{q_norm,
k_norm} (Qwen3), blocks.N.norm2, blocks.N.ff.{gate,up,down}, final_norm, out_head;
gptlab.formats.llama_names maps them to Hugging Face's and GGUF's spellings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config.gemma3 import Gemma3Config
from gptlab.config.llama import LlamaConfig
from gptlab.model import AttentionImpl, Decoder, KVCache, embedding, reference_attention

# scaled_dot_product_attention shares key/value heads itself from torch 2.5 on (enable_gqa);
# before that the keys and values are repeated per query head.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


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

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq

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
    def __init__(self, cfg: LlamaConfig | Gemma3Config) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.groups = cfg.n_heads // cfg.n_kv_heads
        self.drop_rate = cfg.drop_rate
        bias = cfg.attention_bias or cfg.qkv_bias  # Qwen2: q, k and v only
        self.q = nn.Linear(cfg.emb_dim, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.v = nn.Linear(cfg.emb_dim, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.emb_dim, bias=cfg.attention_bias)
        if cfg.qk_norm:  # Qwen3: one RMSNorm over head_dim, shared by all heads
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
        else:
            self.q_norm = self.k_norm = None
        self.attn_drop = nn.Dropout(cfg.drop_rate)
        self.resid_drop = nn.Dropout(cfg.drop_rate)
        self.impl: AttentionImpl = "sdpa"
        # Queries are multiplied by this before attention's own 1/sqrt(head_dim); Gemma 3
        # sets it so that their scale is its query_pre_attn_scalar ** -0.5.
        self.q_scale = 1.0

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
        if self.q_scale != 1.0:
            q = q * self.q_scale
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
    def __init__(self, cfg: LlamaConfig | Gemma3Config) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.up = nn.Linear(cfg.emb_dim, cfg.hidden_dim, bias=False)
        self.down = nn.Linear(cfg.hidden_dim, cfg.emb_dim, bias=False)
        self.drop = nn.Dropout(cfg.drop_rate)

    @staticmethod
    def act(x: torch.Tensor) -> torch.Tensor:
        """The gate's activation: SiLU here (GeGLU subclasses change it)."""
        return F.silu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.act(self.gate(x)) * self.up(x)))


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
        self.tok_emb = embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.rms_eps)
        n_out = cfg.n_classes or cfg.vocab_size
        # The language-model head has no bias; a classifier head does (as in gptlab.model).
        self.out_head = nn.Linear(cfg.emb_dim, n_out, bias=cfg.n_classes is not None)
        self.rotary = Rotary(rope_frequencies(cfg))
        self._init_parameters(residual=("attn.o.weight", "ff.down.weight"))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        pos, mask, causal = self._positions(idx, cache)
        x = self.drop_emb(self.tok_emb(idx))
        return self._stack(x, cache, mask, causal, self.rotary(pos, x.dtype))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.drop_emb(self.tok_emb(idx))

    def block_args(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        return (self.rotary(pos, x.dtype),)
