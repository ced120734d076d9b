"""The log-probability scorer: cached contexts equal full passes, and transformers agrees."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
import transformers

from gptlab.config import Gemma3Config, GPTConfig, LlamaConfig
from gptlab.errors import GptlabError
from gptlab.formats.hf import export_hf
from gptlab.gemma3 import Gemma3
from gptlab.llama import Llama
from gptlab.model import GPT, IGNORE_INDEX, Decoder
from gptlab.scoring import (
    Prefix,
    Request,
    common_prefix,
    encode_request,
    score_requests,
    score_tree,
    token_logprobs,
)
from gptlab.text import gpt2

VOCAB = 97
MODELS = {
    "gpt2": lambda: GPT(
        GPTConfig(vocab_size=VOCAB, context_length=48, emb_dim=32, n_layers=2, n_heads=4)
    ),
    "llama": lambda: Llama(
        LlamaConfig(
            vocab_size=VOCAB,
            context_length=48,
            emb_dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=48,
            rope_base=10000.0,
        )
    ),
    "gemma3": lambda: Gemma3(  # a sliding window shorter than the contexts
        Gemma3Config(
            vocab_size=VOCAB,
            context_length=48,
            emb_dim=32,
            n_layers=3,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            hidden_dim=48,
            sliding_window=8,
            sliding_pattern=2,
        )
    ),
}


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> Decoder:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def random_requests(n: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)

    def ids(k: int) -> list[int]:
        return [rng.randrange(VOCAB) for _ in range(k)]

    return [
        Request(ids(rng.randint(1, 30)), [ids(rng.randint(1, 9)) for _ in range(rng.randint(1, 5))])
        for _ in range(n)
    ]


def full_pass(model: Decoder, context: list[int], cont: list[int]) -> tuple[float, bool]:
    """The slow reference: the whole text in one uncached pass, read at the continuation."""
    seq = torch.tensor([context + cont])
    with torch.no_grad():
        logits = model(seq)[0, len(context) - 1 : -1].float()
    target = torch.tensor(cont)
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()
    return float(logp), bool((logits.argmax(-1) == target).all())


def test_cached_contexts_equal_full_passes(model: Decoder) -> None:
    requests = random_requests(12)
    scores = score_requests(model, requests, batch_tokens=200)  # several batches, padding
    for r, s in zip(requests, scores, strict=True):
        assert len(s) == len(r.continuations)
        for cont, score in zip(r.continuations, s, strict=True):
            logp, greedy = full_pass(model, list(r.context), list(cont))
            assert score.logprob == pytest.approx(logp, abs=1e-4)
            assert score.greedy == greedy and score.n_tokens == len(cont)


def test_chunks_and_long_rows_equal_full_passes(model: Decoder) -> None:
    """Contexts kept a few at a time (several chunks), and rows whose longest context plus
    longest continuation would pass the context length together (they run apart)."""
    rng = random.Random(2)
    requests = [
        Request(
            [rng.randrange(VOCAB) for _ in range(rng.randint(1, 60))],
            [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))] for _ in range(3)],
        )
        for _ in range(10)
    ]
    scores = score_requests(model, requests, batch_tokens=64, cache_tokens=90)
    for r, s in zip(requests, scores, strict=True):
        keep = model.cfg.context_length - max(len(c) for c in r.continuations)
        for cont, score in zip(r.continuations, s, strict=True):
            logp, greedy = full_pass(model, list(r.context)[-keep:], list(cont))
            assert score.logprob == pytest.approx(logp, abs=1e-4)
            assert score.greedy == greedy


def tree_request(rng: random.Random, context: list[int]) -> Request:
    """Continuations that share their first tokens as score replies do: a few first tokens,
    each alone or followed by others, every one ending in the same end token."""
    end, firsts = 0, rng.sample(range(1, VOCAB), 4)
    conts = [[f, end] for f in firsts]
    conts += [[f, rng.randrange(1, VOCAB), end] for f in firsts for _ in range(3)]
    conts += [[*conts[-1][:2], 5, end]]
    return Request(context, conts)


@pytest.mark.parametrize("window", [8, 40])
def test_tree_from_a_shared_prefix_equals_full_passes(window: int) -> None:
    """score_tree runs each context's rest and every distinct continuation prefix in one pass:
    GPT-2, Llama and Gemma 3 give what full passes give; a sliding window shorter than
    context plus tree (8; 40 for the longest context) scores the continuations one by one
    instead."""
    rng = random.Random(window)
    head = [rng.randrange(VOCAB) for _ in range(9)]
    # the last context's 40 tokens and the tree's 17 nodes take more slots (57) than the
    # models' context length (48), though no position passes it
    contexts = [head + [rng.randrange(VOCAB) for _ in range(n)] for n in (1, 6, 31)]
    for name in MODELS:
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        if name == "gemma3":
            model = Gemma3(dataclasses.replace(model.cfg, sliding_window=window)).eval()
        prefix = Prefix(model, common_prefix(contexts))
        assert prefix.tokens == head
        for context in contexts:
            request = tree_request(rng, context)
            for scores in (score_tree(model, request), score_tree(model, request, prefix)):
                for cont, score in zip(request.continuations, scores, strict=True):
                    logp, greedy = full_pass(model, context, list(cont))
                    assert score.logprob == pytest.approx(logp, abs=1e-4), name
                    assert score.greedy == greedy and score.n_tokens == len(cont)


def test_batch_size_does_not_change_scores(model: Decoder) -> None:
    requests = random_requests(10, seed=1)
    seen: list[int] = []
    alone = score_requests(model, requests, batch_tokens=1, on_batch=seen.append, cache_tokens=1)
    together = score_requests(model, requests, batch_tokens=10**6)
    assert seen == [1] * 10  # one request a chunk, each reported
    for a, b in zip(alone, together, strict=True):
        assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-5)


def test_greedy_continuation_is_recognised(model: Decoder) -> None:
    context = [5, 17, 3]
    with torch.no_grad():
        best = int(model(torch.tensor([context]))[0, -1].argmax())
    other = (best + 1) % VOCAB
    [[hit, miss]] = score_requests(model, [Request(context, [[best], [other]])])
    assert hit.greedy and not miss.greedy and hit.logprob > miss.logprob


def test_long_context_is_cut_from_the_left(model: Decoder) -> None:
    ctx_len = model.cfg.context_length
    context = [i % VOCAB for i in range(100)]
    [[s]] = score_requests(model, [Request(context, [[1, 2, 3]])])
    logp, _ = full_pass(model, context[-(ctx_len - 3) :], [1, 2, 3])
    assert s.logprob == pytest.approx(logp, abs=1e-4)
    with pytest.raises(GptlabError, match="does not fit"):
        score_requests(model, [Request([1], [list(range(ctx_len))])])
    with pytest.raises(GptlabError, match="no tokens"):
        score_requests(model, [Request([1], [[]])])


def test_token_logprobs_mask_and_gradient(model: Decoder) -> None:
    idx = torch.tensor([[4, 8, 15, 16], [23, 42, 7, 9]])
    targets = torch.tensor([[8, 15, IGNORE_INDEX, IGNORE_INDEX], [42, 7, 9, 1]])
    model.train(False)
    logp = token_logprobs(model, idx, targets)
    assert logp.shape == (2, 4) and logp[0, 2:].abs().sum() == 0
    full = torch.log_softmax(model(idx).float(), -1).detach()
    assert float(logp[1, 3].detach()) == pytest.approx(float(full[1, 3, 1]), abs=1e-5)
    logp[targets != IGNORE_INDEX].sum().backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0


def test_encode_request_moves_trailing_spaces_like_lm_eval() -> None:
    tok = gpt2()
    r = encode_request(tok, "The cat sat on the ", ["mat", "hat."])
    assert tok.decode(r.context) == "The cat sat on the"
    assert [tok.decode(c) for c in r.continuations] == [" mat", " hat."]
    empty = encode_request(tok, "", ["Hello"])
    assert list(empty.context) == [tok.eos_id] and tok.decode(empty.continuations[0]) == "Hello"


def test_classifier_is_refused() -> None:
    clf = GPT(
        GPTConfig(
            vocab_size=VOCAB, context_length=16, emb_dim=16, n_layers=1, n_heads=2, n_classes=2
        )
    )
    with pytest.raises(GptlabError, match="classifier"):
        score_requests(clf, [Request([1], [[2]])])


def test_transformers_reference_agrees(model: Decoder, tmp_path: Path) -> None:
    """The same weights exported for transformers, scored the plain way there: same
    log-probabilities (fp32, 1e-4) and the same best choice for every request."""
    folder = export_hf(model, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    requests = random_requests(15, seed=2)
    scores = score_requests(model, requests)
    for r, s in zip(requests, scores, strict=True):
        ref_logps = []
        for cont in r.continuations:
            seq = torch.tensor([list(r.context) + list(cont)])
            with torch.no_grad():
                logits = ref(seq).logits[0, len(r.context) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None]).sum()
            ref_logps.append(float(lp))
        assert [x.logprob for x in s] == pytest.approx(ref_logps, abs=1e-4)
        best = max(range(len(s)), key=lambda i: s[i].logprob)
        assert best == max(range(len(ref_logps)), key=ref_logps.__getitem__)
