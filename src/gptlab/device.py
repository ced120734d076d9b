"""Device facts, apart from any training: which device to run on (checked to exist), bf16
autocast where it pays, moving batches there, and the accelerator's peak FLOP/s.

Inference (generation, serving, the commands) and the training loop both import this module,
so no inference code imports gptlab.training.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from gptlab.errors import GptlabError


def pick_device(name: str = "auto") -> torch.device:
    """The device `name` names, checked to exist here, so that a missing GPU is one line
    before a job creates anything (torch itself only fails at the first tensor moved there);
    `auto` is the best available one."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise GptlabError(f"unknown device {name!r}") from None
        _check_available(name, device)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_available(name: str, device: torch.device) -> None:
    fallback = "use --device cpu or auto"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GptlabError(
                f"--device {name}: no CUDA device is available here (torch "
                f"{torch.__version__}); {fallback}"
            )
        if device.index is not None and device.index >= count:
            raise GptlabError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}; {fallback}"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()):
            raise GptlabError(
                f"--device {name}: no MPS device is available here (torch "
                f"{torch.__version__}); {fallback}"
            )


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast where it pays (GPU, precision auto or bf16); plain fp32 otherwise."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return nullcontext()
    if precision not in ("auto", "bf16"):
        raise GptlabError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(batch: Any, device: torch.device, pin: bool = False) -> Any:
    """Move a batch; with `pin` (CUDA only), through page-locked memory so that the copy runs
    asynchronously while the GPU is still busy with the previous micro-step."""
    if isinstance(batch, torch.Tensor):
        if pin and device.type == "cuda" and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device, pin) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, pin) for k, v in batch.items()}
    return batch


# Dense bf16 peak FLOP/s by GPU name, for model FLOPs utilisation.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively on `device`: a GPU, or a CPU with
    AVX512-BF16 or AMX. There a bfloat16 model reads prompts about twice as fast as in float32
    (the 2-core AMD EPYC: 91 against 41 GFLOP/s for a 77-token product with a 1536 x 8960
    weight); elsewhere bfloat16 products are emulated, and slower."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_bf16()


@functools.cache
def _cpu_bf16() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: assume not
        return False
    flags = set(info.split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def peak_flops(device: torch.device, tflops: float | None = None) -> float | None:
    """The device's dense bf16 peak FLOP/s: `tflops` when given (--peak-tflops), else a known
    GPU's; None where unknown (MFU is then not logged)."""
    if tflops:
        return tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
