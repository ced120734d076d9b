"""The Gemma 3 decoder (text model), written out where it differs from gptlab.llama.

What a token meets, in order, and how it differs from Llama:

- The token embedding, multiplied by sqrt(emb_dim) (in the model's dtype, as Hugging Face
  does); no position embeddings.
- Per block: RMSNorm, grouped-query attention, RMSNorm, residual add; RMSNorm, feed-forward,
  RMSNorm, residual add (norms before *and* after each sub-layer). Every RMSNorm multiplies by
  (1 + weight), so a weight of zeros is the identity; it is computed in float32 throughout.
- Attention as Llama's (gptlab.llama.GroupedQueryAttention: rotary halves layout, a KV cache
  of n_kv_heads heads) with an RMSNorm on each query and key head, and queries scaled by
  query_pre_attn_scalar ** -0.5. Layers alternate: `sliding_pattern - 1` local layers, whose
  queries see only the last `sliding_window` positions (themselves included) and whose rotary
  base is `rope_local_base`, then one global layer (causal over everything, `rope_base`,
  positions divided by `rope_factor`). The window is a mask over the cached keys, so the KV
  cache holds every position and left-padded batches mask padding as for Llama: a padded row
  computes what it would alone.
- GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x)).
- A final RMSNorm and the head tied to the embedding (or `n_classes` for a classifier).

Parameter names: tok_emb, blocks.N.{norm1, attn.{q,k,v,o,q_norm,k_norm}, post_attn_norm,
norm2, ff.{gate,up,down}, post_ff_norm}, final_norm, out_head (gptlab.formats.llama_names maps
them to Hugging Face's and GGUF's spellings).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config.gemma3 import Gemma3Config
from gptlab.llama import GroupedQueryAttention, Rotary, SwiGLU
from gptlab.model import Decoder, KVCache, embedding

Context = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None, bool]  # rope, mask, causal


class GemmaRMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * (1 + weight), all in float32, cast back at the end."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


class GeGLU(SwiGLU):
    @staticmethod
    def act(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def inverse_frequencies(head_dim: int, base: float, factor: float = 1.0) -> torch.Tensor:
    """Rotary inverse frequencies (head_dim / 2,), float32; linear scaling divides them."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return 1.0 / (base**exponent) / factor


def window_mask(
    mask: torch.Tensor | None, causal: bool, start: int, t: int, window: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(mask, is_causal) for a sliding layer: the global layers' pair narrowed so that a query
    at slot q sees keys at slots q - window + 1 .. q only. Padding sits at the left of a row,
    so a distance in slots is a distance in positions."""
    total = start + t
    if total <= window:
        return mask, causal
    q_pos = torch.arange(start, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    near = (k_pos > q_pos - window) & (k_pos <= q_pos)
    return (near[None, None] if mask is None else mask & near), False


class Gemma3Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer: int) -> None:
        super().__init__()
        self.sliding = cfg.is_sliding(layer)
        self.norm1 = GemmaRMSNorm(cfg.emb_dim, cfg.rms_eps)
        self.attn = GroupedQueryAttention(cfg)
        self.attn.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_eps)
        self.attn.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_eps)
        self.attn.q_scale = math.sqrt(cfg.head_dim / cfg.query_scale)
        self.post_attn_norm = GemmaRMSNorm(cfg.emb_dim, cfg.rms_eps)
        self.norm2 = GemmaRMSNorm(cfg.emb_dim, cfg.rms_eps)
        self.ff = GeGLU(cfg)
        self.post_ff_norm = GemmaRMSNorm(cfg.emb_dim, cfg.rms_eps)

    def forward(
        self,
        x: torch.Tensor,
        global_rope: tuple[torch.Tensor, torch.Tensor],
        local: Context,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        rope = global_rope
        if self.sliding:
            rope, mask, causal = local
        h = self.attn(self.norm1(x), rope, cache, layer, mask, causal)
        x = x + self.post_attn_norm(h)
        return x + self.post_ff_norm(self.ff(self.norm2(x)))


class Gemma3(Decoder):
    """The Gemma 3 text decoder; head, initialisation, loss seam and forward are
    gptlab.model.Decoder's."""

    def __init__(self, cfg: Gemma3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = embedding(cfg.vocab_size, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Gemma3Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = GemmaRMSNorm(cfg.emb_dim, cfg.rms_eps)
        n_out = cfg.n_classes or cfg.vocab_size
        self.out_head = nn.Linear(cfg.emb_dim, n_out, bias=cfg.n_classes is not None)
        self.rotary = Rotary(inverse_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_factor))
        self.local_rotary = Rotary(inverse_frequencies(cfg.head_dim, cfg.rope_local_base))
        self._init_parameters(residual=("attn.o.weight", "ff.down.weight"))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        pos, mask, causal = self._positions(idx, cache)
        x = self.embed(idx)
        start = cache.length if cache is not None else 0
        return self._stack(x, cache, mask, causal, *self._rope_args(pos, x, mask, causal, start))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)
        return self.drop_emb(x * torch.tensor(self.cfg.emb_dim**0.5, dtype=x.dtype))

    def block_args(self, x: torch.Tensor) -> tuple[Any, ...]:
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        return self._rope_args(pos, x, None, True, 0)

    def _rope_args(
        self,
        pos: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        start: int,
    ) -> tuple[Any, ...]:
        """(global rope, (local rope, local mask, local is_causal)): the blocks' extra args."""
        window = window_mask(mask, causal, start, x.shape[1], self.cfg.sliding_window, x.device)
        return self.rotary(pos, x.dtype), (self.local_rotary(pos, x.dtype), *window)
