"""Decoding on CPU: the matrix-vector products of each new token through numpy's BLAS.

Why: each new token reads every weight once through matrix-vector products, so CPU decoding
is bound by how fast those products stream memory. torch's CPU wheels do them with their
bundled MKL, numpy's wheels with OpenBLAS; on the 2-core AMD EPYC this project is measured
on, OpenBLAS streams the model's matrices at 16-24 GB/s where MKL manages 9-15 GB/s
(benchmarks/speed.py prints both). So inside `decode_step()` the blocks' linear layers
(gptlab.model.Linear) and the output head (gptlab.generation.decode_head) hand their
products to numpy, on zero-copy views of the same tensors, with as many BLAS threads as
torch has; torch drops to one thread meanwhile. Its remaining work per token is small, and
two thread pools busy-waiting on the same cores made decoding 2.5x slower when measured.

Only for CPU float32 tensors in a decode step (generation's prefill, with its larger
attention, keeps torch's threads). GPTLAB_DECODE_BLAS=0 keeps every product in torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import SimpleNamespace

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

enabled = os.environ.get("GPTLAB_DECODE_BLAS", "1") != "0"
_step = threading.local()  # per thread, as a server decodes in its own


def active(x: torch.Tensor) -> bool:
    """Whether a product on `x` should go through numpy: inside a decode step, CPU float32."""
    return getattr(_step, "on", False) and x.device.type == "cpu" and x.dtype == torch.float32


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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias, like F.linear, for float32 CPU tensors, computed by numpy's BLAS
    (no autograd)."""
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise TypeError(f"numpy decoding takes float32, got {x.dtype} and {weight.dtype}")
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=x.dtype)
    np.matmul(_view(rows), _view(weight).T, out=_view(out))
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


@cache
def _blas_threads() -> ThreadpoolController:
    return ThreadpoolController()  # finds numpy's BLAS among the loaded libraries


@contextmanager
def decode_step(device: torch.device) -> Iterator[None]:
    """Run one decode step's products through numpy's BLAS (see the module docstring)."""
    if not enabled or device.type != "cpu" or getattr(_step, "on", False):
        yield
        return
    threads = torch.get_num_threads()
    with _blas_threads().limit(limits=threads, user_api="blas"):
        torch.set_num_threads(1)
        _step.on = True
        try:
            yield
        finally:
            _step.on = False
            torch.set_num_threads(threads)
