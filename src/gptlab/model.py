"""The GPT-2 architecture, written out in full.

Token + position embeddings, a stack of pre-LayerNorm transformer blocks (causal multi-head
self-attention, then a 4x GELU feed-forward, each wrapped in a residual shortcut), a final
LayerNorm and an output head: the vocabulary for a language model, or `n_classes` for a
classifier. Parameter names follow one simple scheme so that OpenAI's and Hugging Face's
checkpoints map onto them one to one (see gptlab.formats).

Attention has two paths that compute the same thing: `sdpa` (PyTorch's fused
scaled_dot_product_attention, the fast default) and `reference` (mask, scale by
1/sqrt(head dim), softmax, matmul, spelled out). A preallocated KVCache lets generation feed
one token at a time. The linear layers are nn.Linear with one addition: inside a CPU decode
step they multiply through numpy's BLAS (see gptlab.cpu_decode for why).

Given targets, the forward pass returns the summed next-token cross-entropy instead of logits
(so that DDP and FSDP wrappers, which only see `forward`, cover the loss too). The vocabulary
projection is the largest matmul of a training step; the loss computes it only at positions
with a target, and on CPU in vocabulary chunks fused with the cross-entropy (see head_loss).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gptlab import cpu_decode
from gptlab.config import GPTConfig

AttentionImpl = Literal["sdpa", "reference"]


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated to `max_len`.

    Rows may be left-padded (prompts of different lengths in one batch): `n_pad[b]` leading
    positions of row b are padding, masked out as keys, and positions count from the first
    real token so that a padded row computes exactly what it would alone.
    """

    def __init__(
        self,
        cfg: GPTConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
        n_pad: torch.Tensor | None = None,
    ) -> None:
        if max_len > cfg.context_length:
            raise ValueError(f"cache length {max_len} exceeds context {cfg.context_length}")
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim)
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


class Linear(nn.Linear):
    """nn.Linear whose products, inside a CPU decode step, go through numpy's BLAS
    (gptlab.cpu_decode says why); everywhere else it is nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_decode.active(x):
            return cpu_decode.linear(x, self.weight, self.bias)
        return super().forward(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.drop_rate = cfg.drop_rate
        self.qkv = Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.proj = Linear(cfg.emb_dim, cfg.emb_dim)
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
            y = self._reference(q, k, v, mask)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_drop(self.proj(y))

    def _reference(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = self.attn_drop(torch.softmax(scores, dim=-1))
        return weights @ v


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = Linear(4 * cfg.emb_dim, cfg.emb_dim)
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


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        n_out = cfg.n_classes or cfg.vocab_size
        # GPT-2's head has no bias; a classifier head does.
        self.out_head = Linear(cfg.emb_dim, n_out, bias=cfg.n_classes is not None)
        self.gradient_checkpointing = False
        if self.tied:
            self.out_head.weight = self.tok_emb.weight
        if self.tok_emb.weight.is_meta:  # built to receive loaded weights: random init is waste
            return
        self.apply(self._init_weights)
        # GPT-2: scale the init of residual projections by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.apply_weight_layout()

    @property
    def tied(self) -> bool:
        return self.cfg.tie_weights and self.cfg.n_classes is None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def apply_weight_layout(self, input_major: bool = True) -> None:
        """Store the widening layers' weights (attention qkv, feed-forward fc) input-major,
        the layout for decoding; with `input_major=False`, every weight contiguous, the layout
        for training (training.train switches to it).

        Why: one new token reads every weight once, through matrix-vector products, and on CPU
        those stream a matrix fastest along long contiguous rows: qkv (768 -> 2304) and fc
        (768 -> 3072) about 1.4x faster stored (in, out) than as nn.Linear's (out, in), while
        the narrowing projections are fastest as they are (benchmarks/speed.py measures the
        whole effect). Only the memory order changes: names, shapes and saved files do not
        (checkpoints write contiguous tensors), and the weights keep their identity. Called
        on construction, after loading and before training, never while an optimizer holds
        state for the weights (its moments must keep their parameter's layout)."""
        with torch.no_grad():
            for block in self.blocks:
                for layer, widening in (
                    (block.attn.qkv, True),
                    (block.attn.proj, False),
                    (block.ff.fc, True),
                    (block.ff.proj, False),
                ):
                    w = getattr(layer, "base", layer).weight  # a LoRA layer: its base's
                    if widening and input_major:
                        if w.stride() != (1, w.shape[0]):
                            w.data = w.t().contiguous().t()
                    elif not w.is_contiguous():
                        w.data = w.contiguous()

    def set_attention(self, impl: AttentionImpl) -> None:
        """Switch every layer between the fused (`sdpa`) and the explicit (`reference`) path."""
        for block in self.blocks:
            block.attn.impl = impl

    def num_params(self, trainable_only: bool = False) -> int:
        """Unique parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, T, emb_dim), before the output head."""
        t = idx.shape[1]
        if cache is not None:
            if cache.length + t > cache.max_len:
                raise ValueError(f"KV cache full: {cache.length} + {t} > {cache.max_len}")
            pos = cache.positions(t)
            mask, causal = cache.attention_mask(t)
        else:
            if t > self.cfg.context_length:
                raise ValueError(f"sequence length {t} exceeds context {self.cfg.context_length}")
            pos = torch.arange(t, device=idx.device)[None, :]
            mask, causal = None, True
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i, mask, causal)
        if cache is not None:
            cache.length += t
        return self.final_norm(x)

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
            return head_loss(self.out_head, h.flatten(0, 1), targets.flatten())
        if last_only:
            h = h[:, -1:]
        return self.out_head(h)


IGNORE_INDEX = -100
HEAD_CHUNK = 4096  # vocabulary rows per matmul in _ChunkedHeadLoss


def head_loss(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of head(h) (N, V) against y (N,), skipping IGNORE_INDEX targets.

    Rows without a target are dropped first: in instruction batches (padding, masked prompts)
    they are most rows. On CPU in fp32 a plain bias-free head goes through _ChunkedHeadLoss;
    elsewhere (GPU, autocast, LoRA-wrapped or biased heads) through F.cross_entropy."""
    keep = y != IGNORE_INDEX
    if not bool(keep.all()):
        h, y = h[keep], y[keep]
    if (
        h.device.type == "cpu"
        and h.dtype == torch.float32
        and type(head) is Linear
        and head.bias is None
        and not torch.is_autocast_enabled("cpu")
    ):
        return _ChunkedHeadLoss.apply(h, head.weight, y)
    return F.cross_entropy(head(h).float(), y, reduction="sum")


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum(cross_entropy(h @ w.T, y)), with the gradient formed during the forward pass.

    Why, on CPU: the logits are computed transposed, (vocab, N), in row chunks written in
    place, which the CPU matmul runs faster than one (N, emb) x (emb, vocab) product; the
    softmax becomes the logits' gradient in place (softmax - one-hot), so no second buffer is
    zero-filled and written as by log_softmax + nll_loss backward; backward is then a matmul
    for h and chunked matmuls for w. benchmarks/speed.py measures the training step."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        vocab, cols = w.shape[0], torch.arange(h.shape[0])
        grad_t = torch.empty(vocab, h.shape[0], dtype=h.dtype)
        for j in range(0, vocab, HEAD_CHUNK):
            torch.mm(w[j : j + HEAD_CHUNK], h.t(), out=grad_t[j : j + HEAD_CHUNK])
        target_logit = grad_t[y, cols]
        peak = grad_t.amax(dim=0)
        grad_t.sub_(peak).exp_()
        total = grad_t.sum(dim=0)
        loss = (peak + total.log() - target_logit).sum()
        grad_t.div_(total)
        grad_t[y, cols] -= 1.0
        ctx.save_for_backward(grad_t, h, w)
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_t, h, w = ctx.saved_tensors
        # g scales the small (N, emb) operands, not the (vocab, emb) product.
        dh = (grad_t.t() @ w).mul_(g) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            dw, hg = torch.empty_like(w), h * g
            for j in range(0, w.shape[0], HEAD_CHUNK):
                torch.mm(grad_t[j : j + HEAD_CHUNK], hg, out=dw[j : j + HEAD_CHUNK])
        return dh, dw, None
