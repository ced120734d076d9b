"""Continuous batching over a shared prefix (gptlab.batch_generation) gives every prompt what
it gives alone: GPT-2, a grouped-query Llama and a sliding-window Gemma 3 (test_scoring's),
with slots refilled, a cache compacted at the context's end, stop ids and stop strings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptlab.batch_generation import generate_all, generate_all_text
from gptlab.errors import GptlabError
from gptlab.generation import generate
from gptlab.model import GPT, Decoder
from gptlab.settings import Sampling

from .test_scoring import MODELS, VOCAB


def build(name: str, ctx: int) -> Decoder:
    """test_scoring's tiny GPT-2, grouped-query Llama or Gemma 3 (window 8, shorter than the
    prompts), with a context of `ctx` tokens."""
    model = MODELS[name]()
    torch.manual_seed(0)
    return type(model)(dataclasses.replace(model.cfg, context_length=ctx)).eval()


def prompts(shared: int, seed: int = 1) -> list[list[int]]:
    """Seven prompts of 1 to 19 tokens after `shared` common ones."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(VOCAB, (shared,), generator=g).tolist()
    lens = [5, 1, 19, 3, 12, 8, 2]
    return [head + torch.randint(VOCAB, (n,), generator=g).tolist() for n in lens]


def alone(model: Decoder, ps: list[list[int]], s: Sampling) -> list[list[int]]:
    s = s.replace(on_context_full="stop")
    return [generate(model, [p], s)[0] for p in ps]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("slots", [1, 3, 16])
def test_equals_each_prompt_alone(name: str, slots: int) -> None:
    model = build(name, 128)
    s = Sampling(max_new_tokens=9, stop_ids=())
    ps = prompts(shared=20)
    assert generate_all(model, ps, s, slots=slots) == alone(model, ps, s)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cache_compacts_and_rows_end_at_the_context(name: str) -> None:
    # a 40-token context: answers of up to 30 tokens after prompts of 11-29 fill it, so the
    # cache moves its rows left again and again, and the longest prompts end at its end
    model = build(name, 40)
    s = Sampling(max_new_tokens=30, stop_ids=())
    ps = prompts(shared=10, seed=2)
    got = generate_all(model, ps, s, slots=3)
    assert got == alone(model, ps, s)
    assert max(len(p) + len(g) for p, g in zip(ps, got, strict=True)) == 41


def test_stop_ids_and_strings_end_only_their_row() -> None:
    model = build("llama", 128)
    ps = prompts(shared=4, seed=3)
    free = alone(model, ps, Sampling(max_new_tokens=12, stop_ids=()))
    stop = free[0][4]  # a token the first prompt's answer meets
    s = Sampling(max_new_tokens=12, stop_ids=(stop,))
    got = generate_all(model, ps, s, slots=2)
    assert got == alone(model, ps, s)
    assert len(got[0]) == free[0].index(stop)
    assert any(len(g) == 12 for g in got)


def test_text_is_cut_at_stop_strings_and_progress_counts_every_prompt(tiny_model: GPT) -> None:
    model = tiny_model  # GPT-2's whole vocabulary, for its tokenizer
    texts = ["The cat sat on the mat and", "The cat sat on the mat, then"]
    s = Sampling(max_new_tokens=8, stop_ids=())
    whole = generate_all_text(model, texts, s)
    stop = whole[1][len(whole[1]) // 2 :][:2]
    ended: list[int] = []
    cut = generate_all_text(model, texts, s.replace(stop_strings=(stop,)), on_done=ended.append)
    assert cut[1] == whole[1][: whole[1].index(stop)]
    assert sum(ended) == 2


def test_bad_input() -> None:
    model = build("gpt2", 32)
    with pytest.raises(GptlabError, match="at least one token"):
        generate_all(model, [[1], []], Sampling())
    with pytest.raises(GptlabError, match="slots must be at least 1"):
        generate_all(model, [[1]], Sampling(), slots=0)
    assert generate_all(model, [], Sampling()) == []
