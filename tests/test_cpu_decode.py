"""CPU decoding through numpy's BLAS: same results as torch's path, threads handed back."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info

from gptlab import cpu_decode
from gptlab.generation import generate
from gptlab.model import GPT, Linear
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
    # An input-major weight (GPT.apply_weight_layout) gives the same.
    torch.testing.assert_close(cpu_decode.linear(x, w.t().contiguous().t(), b), F.linear(x, w, b))
    w.untyped_storage().resize_(0)  # still resizable, as FSDP needs to free gathered weights


def test_decode_step_uses_numpy_then_restores_the_threads() -> None:
    torch.manual_seed(0)
    layer, x = Linear(48, 80), torch.randn(1, 1, 48)
    want = F.linear(x, layer.weight, layer.bias)
    assert not cpu_decode.active(x)
    with torch.inference_mode(), cpu_decode.decode_step(torch.device("cpu")):
        assert cpu_decode.active(x) and not cpu_decode.active(x.double())
        assert torch.get_num_threads() == 1
        assert blas_threads() == 2  # torch's count, from the conftest fixture
        got = layer(x)
    torch.testing.assert_close(got, want)
    assert not cpu_decode.active(x) and torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), cpu_decode.decode_step(torch.device("cpu")):
        raise RuntimeError("a failing step")
    assert not cpu_decode.active(x) and torch.get_num_threads() == 2


def test_decode_step_leaves_other_devices_to_torch() -> None:
    with cpu_decode.decode_step(torch.device("meta")):
        assert torch.get_num_threads() == 2
        assert not cpu_decode.active(torch.randn(2))


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
    # Every decode step: 4 products per block and the head.
    assert len(calls) >= (s.max_new_tokens - 1) * (4 * TINY.n_layers + 1)
    monkeypatch.setattr(cpu_decode, "enabled", False)
    calls.clear()
    assert generate(tiny_model, prompts, s) == numpy_tokens
    assert not calls


def test_environment_variable_turns_it_off() -> None:
    probe = "import gptlab.cpu_decode as c; print(c.enabled)"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "GPTLAB_DECODE_BLAS": value}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want
