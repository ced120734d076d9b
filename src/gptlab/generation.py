"""Text generation: greedy, temperature, top-k and top-p sampling, batched, with a KV cache.

Prompts of different lengths share a batch by left padding (the KV cache masks the padding
and counts positions from each row's first real token, so a row generates exactly what it
would alone). A row stops at a stop token (not included in its output) or once its text
contains a stop string (trimmed by `generate_text`).

Text goes through the model's tokenizer (a gptlab.text.Tokenizer; GPT-2's when none is given,
so every GPT-2 caller is unchanged). Sampling's default stop ids are GPT-2's <|endoftext|>;
with another tokenizer they become that tokenizer's `stop_ids` (eos and end-of-turn tokens),
while `--no-stop` (no stop ids) stays no stop ids.

When a row would pass the model's context length, `on_context_full` decides:
- "slide" (default): keep the most recent half of the context, rebuild the cache from it and
  go on; each new token then sees at least half a context of history.
- "stop": end generation there; `GenerationStats.hit_context_limit` says so.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from gptlab import text as text_tokenizers
from gptlab.cpu import decode as cpu_decode
from gptlab.errors import GptlabError
from gptlab.model import Decoder, KVCache
from gptlab.settings import EOT_ID, Sampling
from gptlab.tokenizer import get_tokenizer

log = logging.getLogger("gptlab")


def _tokenizer(tokenizer: text_tokenizers.Tokenizer | None) -> text_tokenizers.Tokenizer:
    return tokenizer if tokenizer is not None else text_tokenizers.gpt2()


def _is_gpt2(tokenizer: text_tokenizers.Tokenizer) -> bool:
    return isinstance(tokenizer, text_tokenizers.GPT2Tokenizer)


def tokenizer_sampling(s: Sampling, tokenizer: text_tokenizers.Tokenizer | None) -> Sampling:
    """`s` with the tokenizer's stop ids in place of the default (GPT-2's <|endoftext|>);
    explicit choices (no stop ids) and GPT-2's tokenizer leave it as it is."""
    if tokenizer is None or _is_gpt2(tokenizer) or tuple(s.stop_ids) != (EOT_ID,):
        return s
    return s.replace(stop_ids=tuple(tokenizer.stop_ids))


@dataclass
class GenerationStats:
    hit_context_limit: bool = False
    slides: int = 0
    steps: int = 0
    finished: list[bool] = field(default_factory=list)


def sample_next(
    logits: torch.Tensor, s: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from logits (B, V)."""
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / s.temperature
    # Narrow to the candidates first: top-k (or, for top-p alone, a full sort) once, then
    # top-p and the draw work on the short, sorted list rather than the whole vocabulary.
    k = s.top_k if s.top_k is not None and s.top_k < logits.shape[-1] else None
    if k is None and (s.top_p is None or s.top_p >= 1.0):
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if k is not None:
        cand_logits, cand_ids = torch.topk(logits, k, dim=-1)  # sorted, descending
    else:
        cand_logits, cand_ids = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(cand_logits, dim=-1)
    if s.top_p is not None and s.top_p < 1.0:
        # Drop a token when the tokens ranked above it already reach top_p (keeps at least one).
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= s.top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return cand_ids.gather(-1, choice).squeeze(-1)


def _left_pad(
    prompts: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    idx = torch.zeros((len(prompts), width), dtype=torch.long)  # padding: masked, any id
    for row, p in enumerate(prompts):
        if p:
            idx[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
    n_pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return idx.to(device), n_pad.to(device)


def _prefill(
    model: Decoder, head: cpu_decode.Head, tokens: torch.Tensor, n_pad: torch.Tensor, room: int
) -> tuple[KVCache, torch.Tensor]:
    """A fresh cache filled with `tokens`, with space for `room` more (up to the context);
    returns it and the last position's logits (B, V).

    Why not always the whole context: the cache's memory is fresh, and each key/value plane
    of a long-context model (SmolLM2: 8192 positions x 64 floats = 2 MB, one transparent huge
    page) is faulted in and zeroed whole at its first write. A full-context cache made
    SmolLM2-135M's prefill of a 47-token prompt take 660-690 ms instead of 130-150 ms on
    the 2-core CPU (the first two in a process; later ones may reuse freed, faulted memory),
    and held 377 MB per row."""
    p = next(model.parameters())
    size = min(model.cfg.context_length, tokens.shape[1] + room)
    cache = KVCache(model.cfg, tokens.shape[0], size, p.device, p.dtype, n_pad)
    last = model.hidden_states(tokens, cache)[:, -1]
    with cpu_decode.decode_step(p.device):  # a matrix-vector product, like a decode step
        return cache, head(last)


def check_prompts(model: Decoder, prompts: Sequence[Sequence[int]], allow_none: bool) -> None:
    """Refuse an empty prompt (or, unless `allow_none`, no prompt at all) and a classifier."""
    if (not prompts and not allow_none) or any(len(p) == 0 for p in prompts):
        raise GptlabError("every prompt needs at least one token")
    if model.cfg.n_classes is not None:
        raise GptlabError("this model is a classifier; it cannot generate text")


@torch.inference_mode()
def generate_tokens(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    s: Sampling,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), active (B,) bool) once per step; `active[b]` is False for rows that
    have already stopped, whose token is then meaningless. Without `use_cache`, every step
    recomputes the whole window from scratch (the slow reference the cache is tested against).
    `tokenizer` (default GPT-2's) decodes for stop strings and gives the default stop ids."""
    s = tokenizer_sampling(s, tokenizer)
    tok = _tokenizer(tokenizer)
    check_prompts(model, prompts, allow_none=False)
    stats = stats if stats is not None else GenerationStats()
    ctx = model.cfg.context_length
    device = next(model.parameters()).device
    generator = None
    if s.seed is not None:
        generator = torch.Generator(device=device).manual_seed(s.seed)
    # Prompts longer than the context keep their most recent tokens.
    prompts = [list(p[-ctx:]) for p in prompts]
    tokens, n_pad = _left_pad(prompts, device)
    active = torch.ones(len(prompts), dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in prompts]
    stop_ids = torch.tensor(s.stop_ids or [-1], device=device)
    with cpu_decode.numpy_products(model):  # the model's products, through numpy (CPU)
        head = cpu_decode.head(model.out_head)
        cache, logits = _prefill(model, head, tokens, n_pad, s.max_new_tokens)
        for step in range(s.max_new_tokens):
            nxt = sample_next(logits, s, generator)
            active &= ~torch.isin(nxt, stop_ids)
            stats.steps += 1
            yield nxt, active.clone()
            for row in torch.nonzero(active).flatten().tolist():
                generated[row].append(int(nxt[row]))
                if s.stop_strings and ends_with_stop(tok, generated[row], s.stop_strings):
                    active[row] = False
            if not active.any() or step == s.max_new_tokens - 1:
                break  # (after the last token, no step for logits nobody reads)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if tokens.shape[1] > ctx:
                if s.on_context_full == "stop":
                    stats.hit_context_limit = True
                    log.info("generation reached the context length (%d tokens) and stopped", ctx)
                    break
                drop = tokens.shape[1] - ctx // 2
                tokens, n_pad = tokens[:, drop:], (n_pad - drop).clamp_min(0)
                stats.slides += 1
                cache, logits = _prefill(model, head, tokens, n_pad, s.max_new_tokens)
            elif use_cache:
                with cpu_decode.decode_step(device):
                    logits = head(model.hidden_states(nxt[:, None], cache)[:, -1])
            else:
                cache, logits = _prefill(model, head, tokens, n_pad, s.max_new_tokens)
    stats.finished = (~active).tolist()


def ends_with_stop(
    tokenizer: text_tokenizers.Tokenizer, ids: list[int], stops: tuple[str, ...]
) -> bool:
    # Stop strings are short: the last few tokens' text is enough to find one just completed.
    tail = tokenizer.decode(ids[-16:])
    return any(stop in tail for stop in stops)


def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    s: Sampling,
    use_cache: bool = True,
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (stop tokens excluded)."""
    out: list[list[int]] = [[] for _ in prompts]
    steps = generate_tokens(model, prompts, s, use_cache=use_cache, tokenizer=tokenizer)
    for nxt, active in steps:
        for row in torch.nonzero(active).flatten().tolist():
            out[row].append(int(nxt[row]))
    return out


def trim_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(stop) for stop in stops if stop in text), default=len(text))
    return text[:cut]


def generate_text(
    model: Decoder,
    prompts: Sequence[str],
    s: Sampling,
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> list[str]:
    """Generated continuations of each prompt, cut before any stop string; prompts are
    encoded and outputs decoded by `tokenizer` (default GPT-2's)."""
    tok = _tokenizer(tokenizer)
    ids = generate(model, [tok.encode(p) for p in prompts], s, tokenizer=tok)
    return [trim_at_stop(tok.decode(row), s.stop_strings) for row in ids]


# ---- streaming text --------------------------------------------------------------------------


class TextStream:
    """Token ids in, text safe to show out, for every streamed output (server, chat, generate):
    whole UTF-8 characters only (a character split over byte-level tokens waits for its last
    byte), ending before the first stop string and holding back any tail that could be the start
    of one, so a reader never sees part of a stop string or of a character. GPT-2's tokens
    (the default `tokenizer`) are decoded byte by byte; another tokenizer's by decoding a short
    window of recent ids and taking what is new once it ends in a whole character."""

    def __init__(
        self, stops: Sequence[str] = (), tokenizer: text_tokenizers.Tokenizer | None = None
    ) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.tokenizer = None if tokenizer is None or _is_gpt2(tokenizer) else tokenizer
        self.ids: list[int] = []  # another tokenizer's ids, from `start`
        self.start = 0  # the window's first id
        self.done = 0  # ids[start:done] are already shown
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded, but possibly the start of a stop string
        self.stopped = False  # a stop string was seen: nothing more comes out

    def push(self, token: int) -> str:
        """The text that `token` makes safe to show ("" while it is held back)."""
        if self.stopped:
            return ""
        self.pending += self._decode(token)
        if any(stop in self.pending for stop in self.stops):
            self.stopped = True
            text, self.pending = trim_at_stop(self.pending, self.stops), ""
            return text
        hold = max(
            (
                n
                for stop in self.stops
                for n in range(len(stop) - 1, 0, -1)
                if self.pending.endswith(stop[:n])
            ),
            default=0,
        )
        text = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(text) :]
        return text

    def _decode(self, token: int) -> str:
        if self.tokenizer is None:
            return self.decoder.decode(get_tokenizer().decode_single_token_bytes(token))
        self.ids.append(token)
        decode = self.tokenizer.decode
        shown = decode(self.ids[self.start : self.done])
        now = decode(self.ids[self.start :])
        if now.endswith("\ufffd") or not now.startswith(shown):
            return ""  # a character still split over byte-level tokens
        new = now[len(shown) :]
        # The next window starts a few ids back, so decoding keeps its context (spaces).
        self.start, self.done = max(self.start, len(self.ids) - 4), len(self.ids)
        return new

    def _rest(self) -> str:
        if self.tokenizer is None:
            return self.decoder.decode(b"", final=True)
        decode = self.tokenizer.decode
        shown = decode(self.ids[self.start : self.done])
        now = decode(self.ids[self.start :])
        self.done = len(self.ids)
        return now[len(shown) :] if now.startswith(shown) else now

    def flush(self) -> str:
        """The held-back rest once the tokens have ended (a dangling partial character becomes
        U+FFFD), cut at a stop string; "" after a stop."""
        if self.stopped:
            return ""
        text = self.pending + self._rest()
        self.pending = ""
        self.stopped = any(stop in text for stop in self.stops)
        return trim_at_stop(text, self.stops)


def stream_text(
    model: Decoder,
    prompt: Sequence[int],
    sampling: Sampling,
    tokenizer: text_tokenizers.Tokenizer | None = None,
) -> Iterator[str]:
    """The continuation of `prompt` (token ids) piece by piece, as chat shows a reply: never a
    stop string (TextStream holds back what might start one) nor the whitespace it ends with
    (held until more text follows), so the pieces join to the text cut at its stop and
    right-stripped."""
    s = tokenizer_sampling(sampling, tokenizer)
    stream = TextStream(s.stop_strings, tokenizer=tokenizer)

    def pieces() -> Iterator[str]:
        for nxt, active in generate_tokens(model, [list(prompt)], s, tokenizer=tokenizer):
            if not bool(active[0]):
                break
            yield stream.push(int(nxt[0]))
            if stream.stopped:
                break
        yield stream.flush()

    spaces = ""
    for piece in pieces():
        text = spaces + piece
        shown = text.rstrip()
        if shown:
            yield shown
        spaces = text[len(shown) :]
