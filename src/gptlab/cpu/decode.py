"""Decoding on CPU: the matrix-vector products of each new token through numpy's BLAS.

Why: each new token reads every weight once through matrix-vector products, so CPU decoding
is bound by how fast those products stream memory. torch's CPU wheels do them with their
bundled MKL, numpy's wheels with OpenBLAS; on the 2-core AMD EPYC this project is measured
on, OpenBLAS streams the model's matrices at 16-24 GB/s where MKL manages 9-15 GB/s
(benchmarks/speed.py prints both). So inside `decode_step()` the products of the linear
layers on CPU float32 tensors (the blocks' and the output head) go to numpy, on zero-copy
views of the same tensors (the large ones split over as many BLAS threads as torch has, see
below); torch drops to one thread meanwhile. Its remaining work per token is small, and two
thread pools busy-waiting on the same cores made decoding 2.5x slower when measured.

The products of large weights (the output head) are always split over the BLAS threads. The
blocks' (a few MB each) are split or not by what each generation measures (`_Split`): a
split saves up to a quarter of a GPT-2 decode step on a quiet machine (36.8 against 27.8
tokens/s for gpt2-small), while OpenBLAS's hand-over to its second thread cost about 12 ms
per product whenever the machine's other core was busy (SmolLM2-135M's 1536x576 matrices:
0.9 ms on one thread, 11.6 ms on two, on the shared 2-core VM; benchmarks/llama_speed.py).
So each generation times its decode steps both ways, keeps the faster, and tries the other
again now and then (`_Split`), as the machine's load changes. The result is the same bit for
bit either way: each output is one dot product, whichever thread computes it.

The model knows nothing of this. Generation applies it explicitly: `numpy_products(model)`
around a whole generation, `decode_step()` around each new token, and `head()` for the output
head to decode with. Prefill, with its larger attention, keeps torch's threads.
GPTLAB_DECODE_BLAS=0 keeps every product in torch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

enabled = os.environ.get("GPTLAB_DECODE_BLAS", "1") != "0"

Head = Callable[[torch.Tensor], torch.Tensor]
_step = threading.local()  # per thread, as a server decodes in its own (so are torch's modes)


def _view(t: torch.Tensor) -> np.ndarray:
    """numpy's view of a CPU float32 tensor's memory, for the span of one product. Unlike
    Tensor.numpy(), it leaves the storage resizable: FSDP frees the storage of gathered
    parameters after use, which fails on storage that numpy has been given."""
    interface = {
        "shape": tuple(t.shape),
        "typestr": "<f4",
        "data": (t.data_ptr(), False),
        "strides": tuple(stride * 4 for stride in t.stride()),
        "version": 3,
    }
    return np.asarray(SimpleNamespace(__array_interface__=interface))


SPLIT_BYTES = 32 * 2**20  # weights at least this large are always split over the BLAS threads
PROBE_EVERY = 16  # decode steps: one in this many runs the blocks' products the other way


class _Split:
    """Whether the blocks' products are split over the BLAS threads, chosen by time: the way
    in use keeps an average of its seconds per decode step (it follows the machine's load), the
    other is tried once at the start and then again after PROBE_EVERY steps times how much
    slower it was (so a try costs about 1/PROBE_EVERY of the steps' time), its fresh time
    replacing its old one; the faster is taken."""

    def __init__(self) -> None:
        self.seconds: dict[bool, float] = {}
        self.best, self.since = False, 0

    def pick(self) -> bool:
        for way in (False, True):
            if way not in self.seconds:
                return way
        self.best = self.seconds[True] < self.seconds[False]
        self.since += 1
        slower = self.seconds[not self.best] / max(self.seconds[self.best], 1e-9)
        if self.since >= PROBE_EVERY * max(1.0, slower):
            self.since = 0
            return not self.best
        return self.best

    def record(self, way: bool, seconds: float) -> None:
        old = self.seconds.get(way)
        kept = old is not None and way == self.best
        self.seconds[way] = 0.7 * old + 0.3 * seconds if kept else seconds


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias, like F.linear, for float32 CPU tensors, computed by numpy's BLAS
    (no autograd); inside a decode step on its threads for a large weight, and for the others
    as the step chose (`_Split`)."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"numpy decoding takes float32, got {x.dtype} and {weight.dtype}")
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=x.dtype)
    threads = getattr(_step, "threads", 1)
    large = weight.numel() * 4 >= SPLIT_BYTES
    _step.blocks = getattr(_step, "blocks", 0) + (not large)
    widen = threads > 1 and large and not getattr(_step, "split", False)  # else as the step's
    with _blas_threads().limit(limits=threads, user_api="blas") if widen else nullcontext():
        np.matmul(_view(rows), _view(weight).T, out=_view(out))
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


class _NumpyLinear(nn.Linear):
    """nn.Linear whose product, inside a decode step on CPU float32 tensors, goes to numpy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(_step, "on", False) and x.device.type == "cpu" and x.dtype == torch.float32:
            return linear(x, self.weight, self.bias)
        return super().forward(x)


@contextmanager
def numpy_products(model: nn.Module) -> Iterator[None]:
    """For the span of a generation, `model`'s nn.Linear layers (LoRA's base layers included)
    become _NumpyLinear: the same objects and parameters, nn.Linear everywhere but inside
    `decode_step()`. Changing the layers' class costs nothing per token; a torch function mode
    catching F.linear instead made every other operation of the step slower too (8% fewer
    tokens/s for gpt2-small, measured)."""
    layers = [m for m in model.modules() if type(m) is nn.Linear] if enabled else []
    for layer in layers:
        layer.__class__ = _NumpyLinear
    outer, _step.chooser = getattr(_step, "chooser", None), _Split()  # timed afresh
    try:
        yield
    finally:
        _step.chooser = outer
        for layer in layers:
            layer.__class__ = nn.Linear


@cache
def _blas_threads() -> Any:
    """threadpoolctl's controller, which finds numpy's BLAS among the loaded libraries.
    Imported at the first decode step, not with this module: threadpoolctl sets
    KMP_DUPLICATE_LIB_OK in os.environ on import."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def decode_step(device: torch.device) -> Iterator[None]:
    """Run one decode step's products through numpy's BLAS (see the module docstring)."""
    if not enabled or device.type != "cpu" or getattr(_step, "on", False):
        yield
        return
    threads = torch.get_num_threads()
    chooser = getattr(_step, "chooser", None) or _Split()
    split = chooser.pick() if threads > 1 else False
    with _blas_threads().limit(limits=threads if split else 1, user_api="blas"):
        torch.set_num_threads(1)
        _step.on, _step.threads, _step.split, _step.blocks = True, threads, split, 0
        start = time.perf_counter()
        try:
            yield
        finally:
            if _step.blocks:  # a step of the blocks (not a prefill's head alone): timed
                chooser.record(split, time.perf_counter() - start)
            _step.on, _step.threads, _step.split = False, 1, False
            torch.set_num_threads(threads)


def head(layer: nn.Module) -> Head:
    """The output head to decode with, hidden (B, emb) -> logits (B, V).

    Each new token reads the whole head (154 MB for gpt2-small). In a CPU decode step it goes
    through numpy's BLAS like the blocks. Where that is turned off, torch's CPU
    matrix-vector product streams an input-major (emb, vocab) matrix about 1.5x faster than
    nn.Linear's (vocab, emb) layout (benchmarks/speed.py), so each generation makes one
    input-major copy of a plain head. Elsewhere (GPU, LoRA) the layer itself is used."""
    if enabled or type(layer) is not nn.Linear or layer.weight.device.type != "cpu":
        return layer
    w_t = layer.weight.t().contiguous()
    if layer.bias is None:
        return lambda h: h @ w_t
    bias = layer.bias
    return lambda h: torch.addmm(bias, h, w_t)
