import pytest
import torch

from gptlab import generation
from gptlab.errors import GptlabError
from gptlab.generation import GenerationStats, Sampling, generate, generate_tokens, sample_next
from gptlab.model import GPT

from .conftest import TINY


def no_cache_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the slow, obvious way: a full forward pass per token."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids[-TINY.context_length :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_greedy_equals_uncached(tiny_model: GPT) -> None:
    prompt = torch.randint(0, 50257, (7,)).tolist()
    s = Sampling(max_new_tokens=20, stop_ids=())
    cached = generate(tiny_model, [prompt], s)[0]
    assert cached == generate(tiny_model, [prompt], s, use_cache=False)[0]
    assert cached == no_cache_greedy(tiny_model, prompt, 20)


def test_batched_generation_equals_one_by_one(tiny_model: GPT) -> None:
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (3, 11, 6)]
    s = Sampling(max_new_tokens=12, stop_ids=())
    batched = generate(tiny_model, prompts, s)
    assert batched == [generate(tiny_model, [p], s)[0] for p in prompts]


def test_stop_token_ends_only_its_row(tiny_model: GPT) -> None:
    prompts = [torch.randint(0, 50257, (4,)).tolist() for _ in range(2)]
    free = generate(tiny_model, prompts, Sampling(max_new_tokens=10, stop_ids=()))
    stop = free[0][3]  # make row 0's fourth token a stop token
    out = generate(tiny_model, prompts, Sampling(max_new_tokens=10, stop_ids=(stop,)))
    assert out[0] == free[0][: free[0].index(stop)]
    assert out[1] == (free[1][: free[1].index(stop)] if stop in free[1] else free[1])


def test_context_full_slide_continues_and_matches_uncached(tiny_model: GPT) -> None:
    prompt = torch.randint(0, 50257, (20,)).tolist()
    s = Sampling(max_new_tokens=40, stop_ids=())  # 20 + 40 > context 32
    stats = GenerationStats()
    out = []
    for nxt, _ in generate_tokens(tiny_model, [prompt], s, stats=stats):
        out.append(int(nxt[0]))
    assert len(out) == 40 and stats.slides >= 1 and not stats.hit_context_limit
    assert out == generate(tiny_model, [prompt], s, use_cache=False)[0]
    # Right after the first slide, the next token is what a plain forward pass over the kept
    # half-context window predicts.
    seq = prompt + out
    full_at = TINY.context_length + 1  # tokens in the sequence when it no longer fits
    window = seq[full_at - TINY.context_length // 2 : full_at]
    assert out[full_at - len(prompt)] == int(tiny_model(torch.tensor([window]))[0, -1].argmax())


def test_context_full_stop(tiny_model: GPT) -> None:
    prompt = torch.randint(0, 50257, (20,)).tolist()
    stats = GenerationStats()
    s = Sampling(max_new_tokens=40, stop_ids=(), on_context_full="stop")
    out = [int(t[0]) for t, _ in generate_tokens(tiny_model, [prompt], s, stats=stats)]
    assert stats.hit_context_limit
    assert len(out) == TINY.context_length - len(prompt) + 1


def test_long_prompt_keeps_its_end(tiny_model: GPT) -> None:
    prompt = torch.randint(0, 50257, (50,)).tolist()
    s = Sampling(max_new_tokens=3, stop_ids=())
    out = generate(tiny_model, [prompt], s)[0]
    assert out == generate(tiny_model, [prompt[-32:]], s)[0]
    assert out[0] == int(tiny_model(torch.tensor([prompt[-32:]]))[0, -1].argmax())


def test_sampling_filters() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    greedy = sample_next(logits, Sampling(temperature=0))
    assert greedy.tolist() == [0]
    g = torch.Generator().manual_seed(0)
    top2 = {int(sample_next(logits, Sampling(temperature=5.0, top_k=2), g)) for _ in range(200)}
    assert top2 == {0, 1}
    # probs ~ [0.64, 0.24, 0.09, ...]: top_p 0.8 keeps the first two tokens only.
    nucleus = {
        int(sample_next(logits, Sampling(temperature=1.0, top_p=0.8), g)) for _ in range(300)
    }
    assert nucleus == {0, 1}
    tiny_p = {int(sample_next(logits, Sampling(temperature=1.0, top_p=0.01), g)) for _ in range(50)}
    assert tiny_p == {0}


def test_seeded_sampling_is_reproducible(tiny_model: GPT) -> None:
    prompt = [[464, 3290]]
    s = Sampling(max_new_tokens=15, temperature=1.0, top_k=50, seed=7, stop_ids=())
    assert generate(tiny_model, prompt, s) == generate(tiny_model, prompt, s)
    other = Sampling(max_new_tokens=15, temperature=1.0, top_k=50, seed=8, stop_ids=())
    assert generate(tiny_model, prompt, s) != generate(tiny_model, prompt, other)


def test_bad_sampling_values() -> None:
    with pytest.raises(GptlabError, match="top_p"):
        Sampling(top_p=1.5)
    with pytest.raises(GptlabError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(GptlabError, match="top_k"):
        Sampling(top_k=0)


def test_batched_generation_with_a_small_vocabulary() -> None:
    torch.manual_seed(0)
    model = GPT(TINY.replace(vocab_size=100)).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    s = Sampling(max_new_tokens=5, stop_ids=())
    assert generate(model, prompts, s) == [generate(model, [p], s)[0] for p in prompts]


def test_cache_holds_what_generation_needs_not_the_whole_context(
    tiny_model: GPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh full-context cache is faulted in and zeroed at its first writes (see
    generation._prefill); generation sizes it to the prompt plus the new tokens."""
    sizes: list[int] = []
    real = generation.KVCache

    def recorded(cfg: object, batch_size: int, max_len: int, *rest: object) -> object:
        sizes.append(max_len)
        return real(cfg, batch_size, max_len, *rest)

    monkeypatch.setattr(generation, "KVCache", recorded)
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (3, 5)]
    out = generate(tiny_model, prompts, Sampling(max_new_tokens=4, stop_ids=()))
    assert sizes == [5 + 4] and all(len(row) == 4 for row in out)
    sizes.clear()
    generate(tiny_model, prompts, Sampling(max_new_tokens=40, stop_ids=()))  # slides at 32
    assert sizes[0] == TINY.context_length and len(sizes) >= 2
