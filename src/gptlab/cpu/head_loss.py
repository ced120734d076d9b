"""The training loss's vocabulary projection on CPU, in chunks fused with the cross-entropy.

The vocabulary projection is the largest matmul of a training step. `training.train` installs
`chunked` as the model's head loss (`install`); it takes the fast path for a plain bias-free
head in float32 on CPU outside autocast, and hands every other case (GPU, autocast,
LoRA-wrapped or biased heads) to the model's plain `cross_entropy_sum`. `chunked_logprobs` is
its per-row twin: each target's log-probability, which preference tuning sums per response
(gptlab.scoring.response_logprobs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.model import Decoder, cross_entropy_sum

CHUNK = 4096  # vocabulary rows per matmul


def install(model: Decoder) -> None:
    """Make `model`'s loss go through `chunked` (it falls back by itself off CPU)."""
    model.head_loss = chunked


def _fast(head: nn.Module, h: torch.Tensor) -> bool:
    """Whether the fused chunks apply: a plain bias-free head, float32 on CPU, no autocast."""
    return (
        h.device.type == "cpu"
        and h.dtype == torch.float32
        and type(head) is nn.Linear
        and head.bias is None
        and not torch.is_autocast_enabled("cpu")
    )


def chunked(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of head(h) (N, V) against y (N,), every target real."""
    if _fast(head, h):
        return _ChunkedHeadLoss.apply(h, head.weight, y, False)
    return cross_entropy_sum(head, h, y)


def chunked_logprobs(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y_i) under head(h_i) (N,) float32, each target's own (`chunked` per row, negated;
    shaped as a model's head loss, for preference tuning's per-response sums)."""
    if _fast(head, h):
        return -_ChunkedHeadLoss.apply(h, head.weight, y, True)
    return -F.cross_entropy(head(h).float(), y, reduction="none")


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum(cross_entropy(h @ w.T, y)), with the gradient formed during the forward pass.

    Why, on CPU: the logits are computed transposed, (vocab, N), in row chunks written in
    place, which the CPU matmul runs faster than one (N, emb) x (emb, vocab) product; the
    softmax becomes the logits' gradient in place (softmax - one-hot), so no second buffer is
    zero-filled and written as by log_softmax + nll_loss backward; backward is then a matmul
    for h and chunked matmuls for w. benchmarks/speed.py measures the training step."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        h: torch.Tensor,
        w: torch.Tensor,
        y: torch.Tensor,
        per_row: bool,
    ) -> torch.Tensor:
        vocab, cols = w.shape[0], torch.arange(h.shape[0])
        grad_t = torch.empty(vocab, h.shape[0], dtype=h.dtype)
        for j in range(0, vocab, CHUNK):
            torch.mm(w[j : j + CHUNK], h.t(), out=grad_t[j : j + CHUNK])
        target_logit = grad_t[y, cols]
        peak = grad_t.amax(dim=0)
        grad_t.sub_(peak).exp_()
        total = grad_t.sum(dim=0)
        loss = peak + total.log() - target_logit
        if not per_row:
            loss = loss.sum()
        grad_t.div_(total)
        grad_t[y, cols] -= 1.0
        ctx.save_for_backward(grad_t, h, w)
        return loss

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_t, h, w = ctx.saved_tensors
        # g (one for the sum, or one per row) scales the small (N, emb) operands, not the
        # (vocab, emb) product.
        g = g[:, None] if g.dim() else g
        dh = (grad_t.t() @ w).mul_(g) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            dw, hg = torch.empty_like(w), h * g
            for j in range(0, w.shape[0], CHUNK):
                torch.mm(grad_t[j : j + CHUNK], hg, out=dw[j : j + CHUNK])
        return dh, dw, None, None
