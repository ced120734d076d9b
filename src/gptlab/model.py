"""The GPT-2 architecture, written out in full.

Token + position embeddings, a stack of pre-LayerNorm transformer blocks (causal multi-head
self-attention, then a 4x GELU feed-forward, each wrapped in a residual shortcut), a final
LayerNorm and an output head: the vocabulary for a language model, or `n_classes` for a
classifier. Parameter names follow one simple scheme so that OpenAI's and Hugging Face's
checkpoints map onto them one to one (see gptlab.formats).

Attention has two paths that compute the same thing: `sdpa` (PyTorch's fused
scaled_dot_product_attention, the fast default) and `reference` (mask, scale by
1/sqrt(head dim), softmax, matmul, spelled out). A preallocated KVCache lets generation feed
one token at a time.

Given targets, the forward pass returns the summed next-token cross-entropy instead of logits
(so that DDP and FSDP wrappers, which only see `forward`, cover the loss too). The vocabulary
projection is the largest matmul of a training step, so it is computed only at positions with
a target, by `GPT.head_loss`: a plain cross-entropy here, which training replaces on CPU with
a faster one of the same value (gptlab.cpu.head_loss). Nothing in this file is CPU-specific.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.config import GPTConfig, ModelConfig
from gptlab.errors import GptlabError

AttentionImpl = Literal["sdpa", "reference"]

IGNORE_INDEX = -100

HeadLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_sum(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of head(h) (N, V) against y (N,): the model's head loss."""
    return F.cross_entropy(head(h).float(), y, reduction="sum")


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, drop: nn.Module
) -> torch.Tensor:
    """softmax(q k^T / sqrt(head dim)) v with `mask` (True: may attend) applied, spelled out:
    the path the fused scaled_dot_product_attention is tested against."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return drop(torch.softmax(scores, dim=-1)) @ v


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated to `max_len`.

    Rows may be left-padded (prompts of different lengths in one batch): `n_pad[b]` leading
    positions of row b are padding, masked out as keys, and positions count from the first
    real token so that a padded row computes exactly what it would alone.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
        n_pad: torch.Tensor | None = None,
    ) -> None:
        if max_len > cfg.context_length:
            raise ValueError(f"cache length {max_len} exceeds context {cfg.context_length}")
        # Key/value heads: GPT-2 has one per query head; grouped-query models (gptlab.llama)
        # fewer, and a head size that need not be emb_dim / n_heads.
        n_kv_heads = getattr(cfg, "n_kv_heads", cfg.n_heads)
        shape = (cfg.n_layers, batch_size, n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already written
        if n_pad is None:
            n_pad = torch.zeros(batch_size, dtype=torch.long)
        self.n_pad = n_pad.to(device=device, dtype=torch.long)
        self.padded = bool(self.n_pad.any())

    def positions(self, n_new: int) -> torch.Tensor:
        """Position ids (B, n_new) of the next tokens, counted from each row's first real token."""
        idx = torch.arange(self.length, self.length + n_new, device=self.n_pad.device)
        return (idx[None, :] - self.n_pad[:, None]).clamp_min(0)

    def attention_mask(self, n_new: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for `n_new` queries after the cached prefix. The boolean mask
        (B, 1, n_new, length + n_new) is True where a query may attend; it is None where plain
        causal masking, or none at all for one unpadded query, says the same more cheaply."""
        if not self.padded:
            if n_new == 1:
                return None, False
            if self.length == 0:
                return None, True
        total = self.length + n_new
        device = self.n_pad.device
        q_pos = torch.arange(self.length, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        causal = k_pos <= q_pos  # (n_new, total)
        real_key = k_pos[None] >= self.n_pad[:, None, None]  # (B, 1, total)
        # A padding query attends to itself only, so its softmax row is never empty.
        mask = causal[None] & (real_key | (k_pos == q_pos)[None])
        return mask[:, None], False


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.drop_rate = cfg.drop_rate
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.attn_drop = nn.Dropout(cfg.drop_rate)
        self.resid_drop = nn.Dropout(cfg.drop_rate)
        self.impl: AttentionImpl = "sdpa"

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            start, end = cache.length, cache.length + t
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
        if self.impl == "sdpa":
            dropout = self.drop_rate if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        else:
            if mask is None and causal:
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = reference_attention(q, k, v, mask, self.attn_drop)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU.
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.ff = FeedForward(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer, mask, causal)
        return x + self.ff(self.norm2(x))


def embedding(rows: int, dim: int) -> nn.Embedding:
    """nn.Embedding(rows, dim), except on the meta device (a model built to receive loaded
    weights), where torch's own random init is skipped: normal_ there runs a Python reference
    that imports torch._dynamo, about 3 s of a load, for values that never exist. Elsewhere
    nothing changes, the random stream included."""
    if torch.empty(0).is_meta:
        return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
    return nn.Embedding(rows, dim)


class Decoder(nn.Module):
    """What gptlab's decoders share around their own layers (GPT-2 here, the Llama family in
    gptlab.llama): the tied head, the initialisation, the loss seam and the forward contract
    that generation, training and LoRA rely on. A subclass builds `tok_emb`, `blocks`,
    `final_norm` and `out_head`, then calls `_init_parameters`, and defines `hidden_states`."""

    cfg: ModelConfig

    def _init_parameters(self, residual: tuple[str, ...]) -> None:
        """Tie the head, then initialise (unless built on the meta device to receive loaded
        weights: random init is waste) with GPT-2's scheme, the residual projections named by
        `residual` scaled by 1/sqrt(2 * n_layers)."""
        self.gradient_checkpointing = False
        self.head_loss: HeadLoss = cross_entropy_sum  # training may install a faster twin
        if self.tied:
            self.out_head.weight = self.tok_emb.weight
        if self.tok_emb.weight.is_meta:
            return
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(residual):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    @property
    def tied(self) -> bool:
        return self.cfg.tie_weights and self.cfg.n_classes is None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_attention(self, impl: AttentionImpl) -> None:
        """Switch every layer between the fused (`sdpa`) and the explicit (`reference`) path."""
        if impl not in ("sdpa", "reference"):
            raise GptlabError(f"unknown attention {impl!r}; choose sdpa or reference")
        for block in self.blocks:
            block.attn.impl = impl

    def num_params(self, trainable_only: bool = False) -> int:
        """Unique parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        raise NotImplementedError

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """What enters the first block for tokens `idx` at positions 0..T-1, without a cache
        (for code that runs the blocks itself, such as a classifier's cached prefix)."""
        raise NotImplementedError

    def block_args(self, x: torch.Tensor) -> tuple[Any, ...]:
        """What every block takes after its input `x` (B, T, D) at positions 0..T-1, without
        a cache: `block(x, *model.block_args(x))` is one uncached, causal block step."""
        return ()

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        targets: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, n_out); with `last_only`, only the last position's (B, 1, n_out),
        which is all generation needs and spares the large vocabulary projection. With
        `targets` (B, T; IGNORE_INDEX where nothing is learned), the summed cross-entropy.
        With `select` (B,), the logits (B, n_out) at that position of each row (a classifier
        reads each text's last real token)."""
        h = self.hidden_states(idx, cache)
        if select is not None:
            return self.out_head(h[torch.arange(len(h), device=h.device), select])
        if targets is not None:
            h, y = h.flatten(0, 1), targets.flatten()
            keep = y != IGNORE_INDEX  # in instruction batches most rows: padding, prompts
            if not bool(keep.all()):
                h, y = h[keep], y[keep]
            return self.head_loss(self.out_head, h, y)
        if last_only:
            h = h[:, -1:]
        return self.out_head(h)

    def _positions(
        self, idx: torch.Tensor, cache: KVCache | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(position ids (B or 1, T), attention mask, is_causal) for the tokens `idx`."""
        t = idx.shape[1]
        if cache is not None:
            if cache.length + t > cache.max_len:
                raise ValueError(f"KV cache full: {cache.length} + {t} > {cache.max_len}")
            return cache.positions(t), *cache.attention_mask(t)
        if t > self.cfg.context_length:
            raise ValueError(f"sequence length {t} exceeds context {self.cfg.context_length}")
        return torch.arange(t, device=idx.device)[None, :], None, True

    def _stack(
        self,
        x: torch.Tensor,
        cache: KVCache | None,
        mask: torch.Tensor | None,
        causal: bool,
        *extra: Any,
    ) -> torch.Tensor:
        """Run the blocks (each called as block(x, *extra, cache, layer, mask, causal)) and the
        final norm; with gradient checkpointing, a training step recomputes each block."""
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, *extra, use_reentrant=False)
            else:
                x = block(x, *extra, cache, i, mask, causal)
        if cache is not None:
            cache.length += x.shape[1]
        return self.final_norm(x)


class GPT(Decoder):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        n_out = cfg.n_classes or cfg.vocab_size
        # GPT-2's head has no bias; a classifier head does.
        self.out_head = nn.Linear(cfg.emb_dim, n_out, bias=cfg.n_classes is not None)
        self._init_parameters(residual=("proj.weight",))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        pos, mask, causal = self._positions(idx, cache)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))
        return self._stack(x, cache, mask, causal)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)[None, :]
        return self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))
