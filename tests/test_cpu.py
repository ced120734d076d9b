"""gptlab.cpu: decoding through numpy's BLAS (same results as torch's path, threads handed
back) and the chunked head loss (the same loss and gradients as F.cross_entropy)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info
from torch import nn

from gptlab.cpu import decode as cpu_decode
from gptlab.cpu import head_loss
from gptlab.generation import generate
from gptlab.model import GPT, IGNORE_INDEX
from gptlab.settings import Sampling

from .conftest import TINY


def blas_threads() -> int:
    return next(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_torch(bias: bool) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 48), torch.randn(80, 48)
    b = torch.randn(80) if bias else None
    torch.testing.assert_close(cpu_decode.linear(x, w, b), F.linear(x, w, b))
    # An input-major weight (a transposed view, as a Hugging Face file gives) too.
    torch.testing.assert_close(cpu_decode.linear(x, w.t().contiguous().t(), b), F.linear(x, w, b))
    w.untyped_storage().resize_(0)  # still resizable, as FSDP needs to free gathered weights


def test_decode_step_uses_numpy_then_restores_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer, x = nn.Linear(48, 80), torch.randn(1, 1, 48)
    want = F.linear(x, layer.weight, layer.bias)
    calls = []
    monkeypatch.setattr(cpu_decode, "linear", lambda *a: calls.append(1) or F.linear(*a))
    with torch.inference_mode(), cpu_decode.numpy_products(layer):
        assert type(layer) is not nn.Linear and isinstance(layer, nn.Linear)
        assert torch.equal(layer(x), want) and not calls  # outside a decode step: torch's
        with cpu_decode.decode_step(torch.device("cpu")):
            assert torch.get_num_threads() == 1
            assert blas_threads() == 1  # small products: one thread (large: see below)
            with cpu_decode.decode_step(torch.device("cpu")):  # nested: changes nothing more
                assert torch.get_num_threads() == 1 and blas_threads() == 1
            got = layer(x)
            assert len(calls) == 1
            double = layer.double()(x.double())  # not float32: torch's own product
            assert len(calls) == 1 and double.dtype == torch.float64
    assert type(layer) is nn.Linear  # handed back as it was
    torch.testing.assert_close(got, want)
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), cpu_decode.decode_step(torch.device("cpu")):
        raise RuntimeError("a failing step")
    assert torch.get_num_threads() == 2


def test_only_large_products_are_split_over_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    x, small, large = torch.randn(1, 48), torch.randn(80, 48), torch.randn(96, 48)
    seen = []
    matmul = np.matmul  # still numpy's product, watched for the thread count it runs with

    def watched(*args: np.ndarray, **kwargs: np.ndarray) -> np.ndarray:
        seen.append(blas_threads())
        return matmul(*args, **kwargs)

    monkeypatch.setattr(np, "matmul", watched)
    monkeypatch.setattr(cpu_decode, "SPLIT_BYTES", large.numel() * 4)
    with torch.inference_mode(), cpu_decode.decode_step(torch.device("cpu")):
        got = [cpu_decode.linear(x, w, None) for w in (small, large)]
        assert blas_threads() == 1
    assert seen == [1, 2]  # torch's count (the conftest fixture's) for the large one only
    for w, y in zip((small, large), got, strict=True):
        torch.testing.assert_close(y, F.linear(x, w))


def test_blocks_split_the_way_that_measured_faster() -> None:
    """Each way is tried once, the faster then kept, the other tried again after PROBE_EVERY
    steps times how much slower it was, and the choice follows when a try finds the other way
    faster (a machine's load changed)."""
    chooser, every = cpu_decode._Split(), cpu_decode.PROBE_EVERY
    assert chooser.pick() is False
    chooser.record(False, 2.0)
    assert chooser.pick() is True
    chooser.record(True, 1.0)  # split: twice as fast, so one thread is tried every 2 x 16
    picks = []
    for _ in range(4 * every):
        picks.append(chooser.pick())
        chooser.record(picks[-1], 1.0 if picks[-1] else 2.0)
    assert picks.count(False) == 2 and picks.index(False) == 2 * every - 1
    chooser.record(False, 0.1)  # a try finds one thread faster now
    assert [chooser.pick() for _ in range(3)] == [False, False, False]


def test_decode_step_leaves_other_devices_to_torch() -> None:
    with cpu_decode.decode_step(torch.device("meta")):
        assert torch.get_num_threads() == 2


def test_generation_is_the_same_through_either_blas(
    tiny_model: GPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_linear = cpu_decode.linear

    def counted(*args: torch.Tensor | None) -> torch.Tensor:
        calls.append(1)
        return real_linear(*args)

    monkeypatch.setattr(cpu_decode, "linear", counted)
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (5, 9)]
    s = Sampling(max_new_tokens=TINY.context_length, stop_ids=())  # slides the window too
    numpy_tokens = generate(tiny_model, prompts, s)
    # 4 products per block and the head in every decode step: one per new token after the
    # first, but for the one where the window slides (a prefill: only its head's product).
    assert len(calls) == (s.max_new_tokens - 2) * (4 * TINY.n_layers + 1) + 2
    monkeypatch.setattr(cpu_decode, "enabled", False)
    calls.clear()
    assert generate(tiny_model, prompts, s) == numpy_tokens
    assert not calls


def test_environment_variable_turns_it_off() -> None:
    probe = "import gptlab.cpu.decode as c; print(c.enabled)"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "GPTLAB_DECODE_BLAS": value}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_loss_equals_cross_entropy(bias: bool) -> None:
    """The chunked path (bias-free head) and the fallback (biased head) both equal
    F.cross_entropy over the full logits, in value and in both gradients. The vocabulary spans
    several chunks and ends in a partial one."""
    torch.manual_seed(0)
    vocab = 2 * head_loss.CHUNK + 7
    head = nn.Linear(16, vocab, bias=bias)
    h = torch.randn(10, 16, requires_grad=True)
    y = torch.randint(0, vocab, (10,))
    loss = head_loss.chunked(head, h, y)
    grads = torch.autograd.grad(loss, [h, head.weight])
    want = F.cross_entropy(head(h), y, reduction="sum")
    want_grads = torch.autograd.grad(want, [h, head.weight])
    torch.testing.assert_close(loss, want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_logprobs_equal_log_softmax_per_row(bias: bool) -> None:
    """The per-row twin (preference tuning's): each target's log-probability, and the
    gradients of a weighted sum of them (every row its own upstream gradient)."""
    torch.manual_seed(0)
    vocab = 2 * head_loss.CHUNK + 7
    head = nn.Linear(16, vocab, bias=bias)
    h = torch.randn(10, 16, requires_grad=True)
    y = torch.randint(0, vocab, (10,))
    weights = torch.randn(10)
    logp = head_loss.chunked_logprobs(head, h, y)
    grads = torch.autograd.grad((logp * weights).sum(), [h, head.weight])
    want = F.log_softmax(head(h), dim=-1).gather(1, y[:, None])[:, 0]
    want_grads = torch.autograd.grad((want * weights).sum(), [h, head.weight])
    torch.testing.assert_close(logp, want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("installed", [False, True])
def test_model_loss_skips_ignored_targets_with_either_head_loss(installed: bool) -> None:
    """GPT(x, targets=y) equals the dense cross-entropy with ignore_index, with the plain head
    loss and with the chunked one installed (as training does); ignored rows get no
    gradient."""
    torch.manual_seed(0)
    model = GPT(TINY)
    if installed:
        head_loss.install(model)
    assert (model.head_loss is head_loss.chunked) == installed
    x = torch.randint(0, TINY.vocab_size, (2, 8))
    y = torch.randint(0, TINY.vocab_size, (2, 8))
    y[0, :3] = IGNORE_INDEX
    emb = model.tok_emb.weight
    loss = model(x, targets=y)
    (grad,) = torch.autograd.grad(loss, emb)
    dense = F.cross_entropy(
        model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    (want,) = torch.autograd.grad(dense, emb)
    torch.testing.assert_close(loss, dense)
    torch.testing.assert_close(grad, want)
