"""Log-probabilities of continuations given a context: how a model is scored without generating.

Two entry points, neither knowing anything about tasks:

- `token_logprobs(model, idx, targets)`: the log-probability of each target token (B, T),
  differentiable, computed only where a target is set (IGNORE_INDEX elsewhere);
  `response_logprobs` sums them per row through the model's own forward, as preference
  tuning (gptlab.preferences) needs for its chosen and rejected rows.
- `score_requests(model, requests)`: for each request, a context and one or more
  continuations, the summed log-probability of every continuation and whether greedy decoding
  would have produced it token by token. The context is run once, its keys and values are
  cached (gptlab.model.KVCache) and copied to one row per continuation, which are then scored
  together in one batch; requests are batched by length, longest first, so that padding is
  small and a batch too large for memory shows at once. Positions continue from each row's
  first real token (the cache counts them), which is what GPT-2's learned positions and the
  Llama family's rotary embeddings both need.

`encode_request` splits text the way lm-evaluation-harness does (trailing spaces of the
context move to the continuation; the continuation's tokens are those of the whole text past
the context's), so the same words give the same tokens as lm-eval's scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.cpu import head_loss
from gptlab.errors import GptlabError
from gptlab.model import IGNORE_INDEX, Decoder, KVCache
from gptlab.text import Tokenizer

HEAD_CHUNK = 1024  # positions projected onto the vocabulary at once (bounds the logits' memory)


@dataclass(frozen=True)
class Request:
    """A context (at least one token) and the continuations to score after it."""

    context: Sequence[int]
    continuations: Sequence[Sequence[int]]


@dataclass(frozen=True)
class Score:
    """One continuation's summed log-probability (nats), whether every one of its tokens was
    the model's most likely next token, and how many tokens it has."""

    logprob: float
    greedy: bool
    n_tokens: int


def encode_request(tokenizer: Tokenizer, context: str, continuations: Sequence[str]) -> Request:
    """Token ids as lm-eval's `_encode_pair` makes them: the context's trailing whitespace
    joins each continuation, and a continuation's ids are those of context + continuation
    after the context's own ids. A context that encodes to nothing starts with the tokenizer's
    bos (or eos) token, so the first continuation token has something to follow."""
    stripped = context.rstrip()
    spaces = context[len(stripped) :]
    ctx = tokenizer.encode(stripped)
    if not ctx:
        ctx = [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]
        conts = [tokenizer.encode(spaces + c, add_bos=False) for c in continuations]
    else:
        conts = [tokenizer.encode(stripped + spaces + c)[len(ctx) :] for c in continuations]
    return Request(ctx, conts)


def _head_logprobs(
    model: Decoder, h: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each target, whether it is the argmax) for hidden states h (N, D)
    and targets (N,), projected through the output head a chunk at a time."""
    logps, greedy = [], []
    for start in range(0, len(h), HEAD_CHUNK):
        logits = model.out_head(h[start : start + HEAD_CHUNK]).float()
        y = targets[start : start + HEAD_CHUNK]
        logp = F.log_softmax(logits, dim=-1)
        logps.append(logp.gather(1, y[:, None]).squeeze(1))
        greedy.append(logits.argmax(dim=-1) == y)
    if not logps:
        return h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool)
    return torch.cat(logps), torch.cat(greedy)


def token_logprobs(model: Decoder, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | idx[b, :t + 1]) as (B, T) float32, 0 where the target is
    IGNORE_INDEX; gradients flow when enabled (the vocabulary is projected only at targets)."""
    h = model.hidden_states(idx)
    keep = targets != IGNORE_INDEX
    logp, _ = _head_logprobs(model, h[keep], targets[keep])
    out = torch.zeros(targets.shape, dtype=torch.float32, device=h.device)
    return out.masked_scatter(keep, logp)


def response_logprobs(
    model: Decoder, module: nn.Module, idx: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Each row's summed log-probability of its targets (B,) float32, differentiable: what
    preference tuning compares. It runs through `module`'s forward (`model` itself, or the
    DDP / FSDP wrapper around it, which must see the forward to synchronise gradients), with
    the head loss of `model` set to gptlab.cpu.head_loss's per-target `chunked_logprobs`
    (training installs a summed loss)."""
    model.head_loss = head_loss.chunked_logprobs
    per_target = module(idx, targets=targets)
    keep = targets != IGNORE_INDEX
    rows = torch.zeros(targets.shape, dtype=torch.float32, device=per_target.device)
    return rows.masked_scatter(keep, per_target).sum(dim=1)


def _fit(request: Request, context_length: int) -> Request:
    """The request with its context cut from the left so that it and its longest continuation
    fit the model's context (lm-eval truncates the same way)."""
    if not request.context or not request.continuations:
        raise GptlabError("a scoring request needs a context token and a continuation")
    longest = max(len(c) for c in request.continuations)
    if min(len(c) for c in request.continuations) == 0:
        raise GptlabError("a continuation encodes to no tokens; nothing to score")
    if longest >= context_length:
        raise GptlabError(
            f"a continuation of {longest} tokens does not fit the model's context "
            f"({context_length} tokens) after at least one context token"
        )
    keep = context_length - longest
    return Request(list(request.context)[-keep:], request.continuations)


def _batches(requests: Sequence[Request], batch_tokens: int) -> list[list[int]]:
    """Request indices grouped into batches, longest first; a batch's cost is its padded
    context width plus its longest continuation, times its rows of continuations."""

    def width(r: Request) -> int:
        return len(r.context) + max(len(c) for c in r.continuations)

    order = sorted(range(len(requests)), key=lambda i: -width(requests[i]))
    batches: list[list[int]] = []
    rows = 0
    for i in order:
        n = len(requests[i].continuations)
        cost = (rows + n) * width(requests[batches[-1][0]]) if batches else 0
        if not batches or cost > batch_tokens:
            batches.append([])
            rows = 0
        batches[-1].append(i)
        rows += n
    return batches


def _padded(rows: Sequence[Sequence[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """rows as one (B, width) tensor, padded with 0 on the left or right, and their lengths."""
    width = max(len(r) for r in rows)
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if left:
            out[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        else:
            out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, torch.tensor([len(r) for r in rows], dtype=torch.long)


def _expand(cache: KVCache, model: Decoder, owner: torch.Tensor, room: int) -> KVCache:
    """A cache of one row per continuation (row r copies its request `owner[r]`'s context),
    with `room` positions left for the continuations."""
    length = cache.length
    rows = KVCache(
        model.cfg, len(owner), length + room, cache.k.device, cache.k.dtype, cache.n_pad[owner]
    )
    rows.k[:, :, :, :length] = cache.k[:, owner, :, :length]
    rows.v[:, :, :, :length] = cache.v[:, owner, :, :length]
    rows.length = length
    return rows


def _score_batch(model: Decoder, batch: Sequence[Request]) -> list[list[Score]]:
    """Scores of every continuation of `batch`: contexts run once, continuations together."""
    device = next(model.parameters()).device
    ctx, ctx_len = _padded([r.context for r in batch], left=True)
    width = ctx.shape[1]
    p = next(model.parameters())
    cache = KVCache(model.cfg, len(batch), width, device, p.dtype, (width - ctx_len).to(device))
    last = model.hidden_states(ctx.to(device), cache)[:, -1]  # predicts each first token
    owner = torch.tensor([b for b, r in enumerate(batch) for _ in r.continuations], device=device)
    conts, lengths = _padded([c for r in batch for c in r.continuations], left=False)
    conts, lengths = conts.to(device), lengths.to(device)
    rows = _expand(cache, model, owner, conts.shape[1])
    h = model.hidden_states(conts, rows)  # h[:, j] predicts token j + 1
    h = torch.cat([last[owner][:, None], h[:, :-1]], dim=1)
    keep = torch.arange(conts.shape[1], device=device)[None, :] < lengths[:, None]
    logp, greedy = _head_logprobs(model, h[keep], conts[keep])
    sums = torch.zeros(len(owner), device=device).index_add_(0, keep.nonzero()[:, 0], logp)
    misses = torch.zeros(len(owner), dtype=torch.long, device=device)
    misses.index_add_(0, keep.nonzero()[:, 0], (~greedy).long())
    flat = [
        Score(float(s), int(m) == 0, int(n))
        for s, m, n in zip(sums.tolist(), misses.tolist(), lengths.tolist(), strict=True)
    ]
    out, at = [], 0
    for r in batch:
        out.append(flat[at : at + len(r.continuations)])
        at += len(r.continuations)
    return out


@torch.inference_mode()
def score_requests(
    model: Decoder,
    requests: Sequence[Request],
    batch_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Score]]:
    """Each request's continuations' Scores, in the order given. `batch_tokens` bounds a
    batch's rows x padded length (a batch holds at least one request); `on_batch(n)` is
    told after each batch how many requests it finished."""
    if model.cfg.n_classes is not None:
        raise GptlabError("this model is a classifier; it has no next-token probabilities")
    fitted = [_fit(r, model.cfg.context_length) for r in requests]
    scores: list[list[Score]] = [[] for _ in requests]
    for batch in _batches(fitted, batch_tokens):
        for i, s in zip(batch, _score_batch(model, [fitted[i] for i in batch]), strict=True):
            scores[i] = s
        if on_batch is not None:
            on_batch(len(batch))
    return scores
