"""Generation for a fixed list of prompts (benchmarks, offline answers): continuous batching
over a shared prompt prefix.

Why: `generation.generate` runs a batch until its longest row ends, and prefills every
prompt whole. GSM8K's 8-shot prompts share about 740 of their 800 tokens, and a few answers
run to the token limit while most end within 100 tokens: batches of 8 spent a third of their
time prefilling the same examples again and most of the rest decoding for one looping row.

How:
- The prompts' common token prefix runs once; its keys and values are copied into each row.
- `slots` rows decode together in one KVCache. A row that ends frees its slot and the next
  prompt takes it: the new prompts' own tokens (after the prefix) run as one block, and each
  one's keys and values are copied into its slot right-aligned at the cache's current end,
  the columns before them becoming that row's padding (KVCache.n_pad). Positions count from
  a row's first real token, so every row computes what it would alone.
- When the cache is full, every row moves left by the padding all rows share.
- Once no prompt is left, ended rows leave the batch, so the last long answers run alone.
- A row ends at a stop id (not kept), a stop string, `max_new_tokens`, or the context's end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gptlab import text as text_tokenizers
from gptlab.cpu import decode as cpu_decode
from gptlab.errors import GptlabError
from gptlab.generation import (
    check_prompts,
    ends_with_stop,
    sample_next,
    tokenizer_sampling,
    trim_at_stop,
)
from gptlab.model import Decoder, KVCache
from gptlab.scoring import Prefix, common_prefix
from gptlab.settings import Sampling

SLACK = 64  # cache columns beyond the longest prompt plus answer: compactions are that rare


class _Batch:
    """The running slots: one KVCache row each, the prompt it holds (None: free) and what
    that prompt has generated so far."""

    def __init__(self, model: Decoder, slots: int, width: int, start: int) -> None:
        p = next(model.parameters())
        self.model = model
        self.cache = KVCache(model.cfg, slots, width, p.device, p.dtype)
        # zeros, not garbage: masked keys still meet a zero attention weight, and 0 x NaN is NaN
        self.cache.k.zero_()
        self.cache.v.zero_()
        self.cache.length = start
        self.cache.n_pad = torch.full((slots,), start, dtype=torch.long, device=p.device)
        self.cache.padded = True
        self.owner: list[int | None] = [None] * slots
        self.logits = torch.zeros(slots, model.cfg.vocab_size, device=p.device)

    def free(self) -> list[int]:
        return [slot for slot, owner in enumerate(self.owner) if owner is None]

    def held(self) -> list[int]:
        return [slot for slot, owner in enumerate(self.owner) if owner is not None]

    def compact(self, keep_room: int) -> None:
        """Move every row left by the padding all held rows share (at most so far that
        `keep_room` columns stay before the end, for prompts still to come)."""
        c = self.cache
        shift = min([int(c.n_pad[slot]) for slot in self.held()] + [c.length - keep_room])
        if shift <= 0:
            raise GptlabError("internal: a full generation cache with no room to compact")
        for kv in (c.k, c.v):
            kv[:, :, :, : c.length - shift] = kv[:, :, :, shift : c.length].clone()
        c.n_pad = (c.n_pad - shift).clamp_min(0)
        c.length -= shift

    def shrink(self) -> None:
        """Drop the free slots (when no prompt is left to take them)."""
        keep = self.held()
        rows = torch.tensor(keep, device=self.cache.k.device)
        c = self.cache
        c.k, c.v, c.n_pad = c.k[:, rows], c.v[:, rows], c.n_pad[rows]
        self.owner = [self.owner[slot] for slot in keep]
        self.logits = self.logits[rows]


def _admit(
    batch: _Batch,
    prefix: Prefix,
    head: cpu_decode.Head,
    prompts: list[list[int]],
    slots: list[int],
) -> torch.Tensor:
    """Run `prompts` (each past the shared prefix) as one block and copy each one's keys and
    values into its slot, right-aligned at the cache's end; their next-token logits."""
    model, big = batch.model, batch.cache
    n_prefix = len(prefix.tokens)
    tails = [p[n_prefix:] for p in prompts]
    lens = torch.tensor([len(t) for t in tails], device=big.k.device)
    width = int(lens.max())
    part = KVCache(model.cfg, len(prompts), n_prefix + width, big.k.device, big.k.dtype)
    part.k[:, :, :, :n_prefix] = prefix.cache.k[:, :, :, :n_prefix]
    part.v[:, :, :, :n_prefix] = prefix.cache.v[:, :, :, :n_prefix]
    part.length = n_prefix
    block = torch.zeros(len(prompts), width, dtype=torch.long)  # right-padded: never read
    for row, tail in enumerate(tails):
        block[row, : len(tail)] = torch.tensor(tail, dtype=torch.long)
    hidden = model.hidden_states(block.to(big.k.device), part)
    last = hidden[torch.arange(len(prompts), device=big.k.device), lens - 1]
    end = big.length
    for row, slot in enumerate(slots):
        n = n_prefix + len(tails[row])
        big.k[:, slot, :, end - n : end] = part.k[:, row, :, :n]
        big.v[:, slot, :, end - n : end] = part.v[:, row, :, :n]
        big.n_pad[slot] = end - n
    with cpu_decode.decode_step(big.k.device):
        return head(last)


@torch.inference_mode()
def generate_all(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    s: Sampling,
    tokenizer: text_tokenizers.Tokenizer | None = None,
    slots: int = 16,
    on_done: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (stop ids excluded), `slots` generated at a time; each
    prompt keeps its last context_length - 1 tokens. `on_done(n)` hears of every n that end."""
    check_prompts(model, prompts, allow_none=True)
    if slots < 1:
        raise GptlabError(f"slots must be at least 1, got {slots}")
    if not prompts:
        return []
    s = tokenizer_sampling(s, tokenizer)
    tok = tokenizer if tokenizer is not None else text_tokenizers.gpt2()
    ctx = model.cfg.context_length
    todo = [list(p[-(ctx - 1) :]) for p in prompts]
    longest = max(len(p) for p in todo)
    shared = common_prefix(todo)
    width = min(ctx, longest + s.max_new_tokens + SLACK)
    out: list[list[int]] = [[] for _ in todo]
    device = next(model.parameters()).device
    generator = None if s.seed is None else torch.Generator(device=device).manual_seed(s.seed)
    with cpu_decode.numpy_products(model):
        head = cpu_decode.head(model.out_head)
        prefix = Prefix(model, shared)
        batch = _Batch(model, min(slots, len(todo)), width, longest)
        queue = list(range(len(todo)))[::-1]  # popped from the end: prompt order
        while True:
            free = batch.free()
            if free and queue:
                taken = [queue.pop() for _ in free[: len(queue)]]
                batch.logits[free[: len(taken)]] = _admit(
                    batch, prefix, head, [todo[i] for i in taken], free[: len(taken)]
                )
                for slot, i in zip(free, taken, strict=False):
                    batch.owner[slot] = i
            elif free:
                if len(free) == len(batch.owner):
                    return out
                batch.shrink()
            nxt = sample_next(batch.logits, s, generator)
            ended = _record(batch, nxt, todo, out, s, tok, ctx)
            if ended and on_done is not None:
                on_done(ended)
            if not batch.held():
                continue
            if batch.cache.length == batch.cache.max_len:
                batch.compact(max((len(todo[i]) for i in queue), default=0))
            with cpu_decode.decode_step(device):
                hidden = model.hidden_states(nxt[:, None], batch.cache)
                batch.logits = head(hidden[:, -1])


def _record(
    batch: _Batch,
    nxt: torch.Tensor,
    prompts: list[list[int]],
    out: list[list[int]],
    s: Sampling,
    tok: text_tokenizers.Tokenizer,
    ctx: int,
) -> int:
    """Append each held row's new token to its output, freeing the slots whose row ended;
    how many ended."""
    held = len(batch.held())
    for slot, i in enumerate(batch.owner):
        if i is None:
            continue
        token = int(nxt[slot])
        if token in s.stop_ids:
            batch.owner[slot] = None
            continue
        out[i].append(token)
        # A row alone feeds tokens until it fills the context, and predicts one more.
        done = len(out[i]) >= s.max_new_tokens or len(prompts[i]) + len(out[i]) > ctx
        if done or (s.stop_strings and ends_with_stop(tok, out[i], s.stop_strings)):
            batch.owner[slot] = None
    return held - len(batch.held())


def generate_all_text(
    model: Decoder,
    prompts: Sequence[str],
    s: Sampling,
    tokenizer: text_tokenizers.Tokenizer | None = None,
    slots: int = 16,
    on_done: Callable[[int], None] | None = None,
) -> list[str]:
    """Each prompt's continuation, cut before any stop string."""
    tok = tokenizer if tokenizer is not None else text_tokenizers.gpt2()
    ids = generate_all(model, [tok.encode(p) for p in prompts], s, tok, slots, on_done)
    return [trim_at_stop(tok.decode(row), s.stop_strings) for row in ids]
