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


CACHE_BYTES = 512 * 2**20  # keys and values of a chunk's contexts kept at once


def _groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices in order of `lengths`, longest first, cut into groups whose padded cost
    (rows x longest) stays within `budget` (a group holds at least one index)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if not groups or (len(groups[-1]) + 1) * lengths[groups[-1][0]] > budget:
            groups.append([])
        groups[-1].append(i)
    return groups


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


class _Contexts:
    """The keys and values of a chunk of contexts, right-aligned in one zeroed cache (B, W)
    (row b's context fills its last len(context) positions), and each context's last hidden
    state, which predicts its continuations' first tokens. Contexts run in groups of similar
    length, so that little padding is computed."""

    def __init__(self, model: Decoder, contexts: Sequence[Sequence[int]], batch_tokens: int):
        device, p = _device(model), next(model.parameters())
        self.lengths = torch.tensor([len(c) for c in contexts], dtype=torch.long, device=device)
        self.width = width = max(len(c) for c in contexts)
        n_pad = width - self.lengths
        self.cache = KVCache(model.cfg, len(contexts), width, device, p.dtype, n_pad)
        self.cache.length = width
        # zeros, not garbage: masked keys still meet a zero attention weight, and 0 x NaN is NaN
        self.cache.k.zero_()
        self.cache.v.zero_()
        self.last = torch.empty(len(contexts), model.cfg.emb_dim, device=device, dtype=p.dtype)
        for group in _groups([len(c) for c in contexts], batch_tokens):
            ctx, ctx_len = _padded([contexts[i] for i in group], left=True)
            w = ctx.shape[1]
            part = KVCache(model.cfg, len(group), w, device, p.dtype, (w - ctx_len).to(device))
            h = model.hidden_states(ctx.to(device), part)
            rows = torch.tensor(group, device=device)
            self.last[rows] = h[:, -1].to(p.dtype)
            self.cache.k[:, rows, :, width - w :] = part.k
            self.cache.v[:, rows, :, width - w :] = part.v

    def rows(self, model: Decoder, owner: torch.Tensor, room: int) -> KVCache:
        """A cache of one row per continuation (row r holds context `owner[r]`), as narrow as
        its longest context, with `room` positions left for the continuations."""
        return _expand(self.cache, model, owner, room, int(self.lengths[owner].max()))


def _expand(
    cache: KVCache, model: Decoder, owner: torch.Tensor, room: int, width: int | None = None
) -> KVCache:
    """A cache of one row per `owner` entry, copying that row's last `width` positions
    (default: all it holds), with `room` positions left after them."""
    length = cache.length
    width = length if width is None else width
    k, v = cache.k, cache.v
    n_pad = (cache.n_pad[owner] - (length - width)).clamp_min(0)
    rows = KVCache(model.cfg, len(owner), width + room, k.device, k.dtype, n_pad)
    rows.k[:, :, :, :width] = k[:, owner, :, length - width : length]
    rows.v[:, :, :, :width] = v[:, owner, :, length - width : length]
    rows.length = width
    return rows


def _device(model: Decoder) -> torch.device:
    return next(model.parameters()).device


def _score_chunk(model: Decoder, chunk: Sequence[Request], batch_tokens: int) -> list[list[Score]]:
    """Scores of every continuation of `chunk`: its contexts run once (in groups), then its
    continuations in groups of similar length, each from its context's cached keys/values."""
    device = _device(model)
    contexts = _Contexts(model, [r.context for r in chunk], batch_tokens)
    flat = [(b, cont) for b, r in enumerate(chunk) for cont in r.continuations]
    limit = model.cfg.context_length
    scores: list[Score] = [Score(0.0, False, 0)] * len(flat)
    for group in _groups([len(c) for _, c in flat], batch_tokens):
        for part in _fitting(group, flat, contexts, limit):
            owner = torch.tensor([flat[i][0] for i in part], device=device)
            conts, lengths = _padded([flat[i][1] for i in part], left=False)
            conts, lengths = conts.to(device), lengths.to(device)
            h = model.hidden_states(conts, contexts.rows(model, owner, conts.shape[1]))
            h = torch.cat([contexts.last[owner][:, None], h[:, :-1]], dim=1)  # h[:, j] -> j
            for i, score in zip(part, _sum_scores(model, h, conts, lengths), strict=True):
                scores[i] = score
    out, at = [], 0
    for r in chunk:
        out.append(scores[at : at + len(r.continuations)])
        at += len(r.continuations)
    return out


def _fitting(
    group: list[int],
    flat: Sequence[tuple[int, Sequence[int]]],
    contexts: _Contexts,
    limit: int,
) -> list[list[int]]:
    """`group` cut where its longest context plus its longest continuation would pass the
    model's context length (every single row fits: see _fit)."""
    parts: list[list[int]] = [[]]
    longest_ctx = longest_cont = 0
    for i in group:
        ctx, cont = int(contexts.lengths[flat[i][0]]), len(flat[i][1])
        if parts[-1] and max(longest_ctx, ctx) + max(longest_cont, cont) > limit:
            parts.append([])
            longest_ctx = longest_cont = 0
        parts[-1].append(i)
        longest_ctx, longest_cont = max(longest_ctx, ctx), max(longest_cont, cont)
    return parts


def _sum_scores(
    model: Decoder, h: torch.Tensor, conts: torch.Tensor, lengths: torch.Tensor
) -> list[Score]:
    """Each row's Score from the hidden states h (B, T, D) that predict its tokens conts
    (B, T), of which the first lengths[b] are real."""
    device = h.device
    keep = torch.arange(conts.shape[1], device=device)[None, :] < lengths[:, None]
    logp, greedy = _head_logprobs(model, h[keep], conts[keep])
    row = keep.nonzero()[:, 0]
    sums = torch.zeros(len(conts), device=device).index_add_(0, row, logp)
    misses = torch.zeros(len(conts), dtype=torch.long, device=device)
    misses.index_add_(0, row, (~greedy).long())
    return [
        Score(float(s), int(m) == 0, int(n))
        for s, m, n in zip(sums.tolist(), misses.tolist(), lengths.tolist(), strict=True)
    ]


def _cache_tokens(model: Decoder) -> int:
    """How many context tokens' keys and values fit CACHE_BYTES."""
    p = next(model.parameters())
    n_kv = getattr(model.cfg, "n_kv_heads", model.cfg.n_heads)
    per_token = 2 * model.cfg.n_layers * n_kv * model.cfg.head_dim * p.element_size()
    return max(1, CACHE_BYTES // per_token)


def common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The tokens every sequence begins with (none for a single one), leaving each at least
    one of its own, whose hidden state predicts what follows it."""
    if len(seqs) < 2:
        return []
    first, n = seqs[0], min(len(x) for x in seqs) - 1
    for x in seqs[1:]:
        n = next((i for i in range(n) if x[i] != first[i]), n)
    return list(first[:n])


class Prefix:
    """Keys and values of tokens that many requests' contexts begin with (a judge's chat
    template and instructions), run once: `score_tree` then runs only the rest of each."""

    @torch.inference_mode()
    def __init__(self, model: Decoder, tokens: Sequence[int]) -> None:
        p = next(model.parameters())
        self.tokens = list(tokens)
        self.cache = KVCache(model.cfg, 1, max(1, len(tokens)), p.device, p.dtype)
        if self.tokens:
            model.hidden_states(torch.tensor([self.tokens], device=p.device), self.cache)

    def begins(self, context: Sequence[int]) -> bool:
        n = len(self.tokens)
        return 0 < n < len(context) and list(context[:n]) == self.tokens


class _TreeCache(KVCache):
    """A one-row cache that takes, in one pass, the rest of a context (after `prefix`) and then
    a tree of continuation prefixes: the rest attends causally; tree node i (its parent
    parents[i], -1: the context's last token) attends to the whole context and to its own
    ancestors, at position len(context) - 1 + its depth."""

    def __init__(self, model: Decoder, prefix: Prefix | None, rest: int, parents: list[int]):
        p = next(model.parameters())
        start = len(prefix.tokens) if prefix is not None else 0
        context, n = start + rest, len(parents)
        super().__init__(model.cfg, 1, 1, p.device, p.dtype)
        # widened past the model's context if need be: the nodes take more slots than positions
        self.max_len = context + n
        shape = (*self.k.shape[:3], self.max_len, self.k.shape[-1])
        self.k = torch.empty(shape, device=p.device, dtype=p.dtype)
        self.v = torch.empty(shape, device=p.device, dtype=p.dtype)
        if prefix is not None:
            self.k[:, :, :, :start] = prefix.cache.k
            self.v[:, :, :, :start] = prefix.cache.v
            self.length = start
        depth = torch.zeros(n, dtype=torch.long)
        ancestors = torch.eye(n, dtype=torch.bool)
        for i, parent in enumerate(parents):
            if parent >= 0:
                depth[i] = depth[parent] + 1
                ancestors[i] |= ancestors[parent]
        positions = torch.cat([torch.arange(start, context), context + depth])
        mask = torch.zeros(rest + n, context + n, dtype=torch.bool)
        mask[:rest, :context] = torch.ones(rest, context, dtype=torch.bool).tril(start)
        mask[rest:, :context] = True
        mask[rest:, context:] = ancestors
        self.tree_positions = positions[None].to(p.device)
        self.tree_mask = mask[None, None].to(p.device)

    def positions(self, n_new: int) -> torch.Tensor:
        return self.tree_positions

    def attention_mask(self, n_new: int) -> tuple[torch.Tensor | None, bool]:
        return self.tree_mask, False


def _windowed(model: Decoder, slots: int) -> bool:
    """Whether a sliding-window layer (Gemma 3) would cut `slots` cache slots: its window is
    counted in slots, which a tree's nodes do not fill in position order."""
    window = getattr(model.cfg, "sliding_window", None)
    return window is not None and slots > window


@torch.inference_mode()
def score_tree(model: Decoder, request: Request, prefix: Prefix | None = None) -> list[Score]:
    """The Scores of `request`'s continuations, as `score_requests` gives them, from one
    forward pass: the context (past `prefix`'s tokens, when it begins with them) and then every
    distinct token prefix of the continuations, once each, as a tree (_TreeCache). Many short
    continuations that share their first tokens (the replies "0" ... "100", digit by digit:
    202 tokens, 101 distinct prefixes) cost one token per prefix. Where a sliding window would
    cut the tree, the continuations are scored one by one (score_requests)."""
    fitted = _fit(request, model.cfg.context_length)
    conts = [list(c) for c in fitted.continuations]
    nodes = list(dict.fromkeys(tuple(c[:d]) for c in conts for d in range(1, len(c))))
    if prefix is None or not prefix.begins(fitted.context):
        prefix = None
    rest = list(fitted.context[len(prefix.tokens) if prefix is not None else 0 :])
    if _windowed(model, len(fitted.context) + len(nodes)):
        return score_requests(model, [fitted])[0]
    index = {node: i for i, node in enumerate(nodes)}
    cache = _TreeCache(model, prefix, len(rest), [index.get(n[:-1], -1) for n in nodes])
    device = cache.k.device
    tokens = torch.tensor([rest + [n[-1] for n in nodes]], device=device)
    h = model.hidden_states(tokens, cache)[0, len(rest) - 1 :]  # the context's last, the nodes
    logp = F.log_softmax(model.out_head(h).float(), -1)
    row = {(): 0, **{node: i + 1 for i, node in enumerate(nodes)}}
    return [_tree_score(c, row, logp) for c in conts]


def _tree_score(c: list[int], row: dict[tuple[int, ...], int], logp: torch.Tensor) -> Score:
    """A continuation's Score from the next-token log-probabilities after each of its
    prefixes (rows of `logp`)."""
    dist = [logp[row[tuple(c[:d])]] for d in range(len(c))]
    total = sum(float(x[t]) for x, t in zip(dist, c, strict=True))
    greedy = all(int(x.argmax()) == t for x, t in zip(dist, c, strict=True))
    return Score(total, greedy, len(c))


@torch.inference_mode()
def score_requests(
    model: Decoder,
    requests: Sequence[Request],
    batch_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
    cache_tokens: int | None = None,
) -> list[list[Score]]:
    """Each request's continuations' Scores, in the order given. `batch_tokens` bounds a
    forward pass's rows x padded length (a pass holds at least one row); requests are taken
    in chunks, longest context first, whose contexts' keys and values (`cache_tokens` of
    them; default: what CACHE_BYTES holds) stay in memory while their continuations are
    scored; `on_batch(n)` is told after each chunk how many requests it finished."""
    if model.cfg.n_classes is not None:
        raise GptlabError("this model is a classifier; it has no next-token probabilities")
    fitted = [_fit(r, model.cfg.context_length) for r in requests]
    budget = max(batch_tokens, cache_tokens or _cache_tokens(model))
    scores: list[list[Score]] = [[] for _ in requests]
    for chunk in _groups([len(r.context) for r in fitted], budget):
        chunk_scores = _score_chunk(model, [fitted[i] for i in chunk], batch_tokens)
        for i, s in zip(chunk, chunk_scores, strict=True):
            scores[i] = s
        if on_batch is not None:
            on_batch(len(chunk))
    return scores
