"""Several processes training one model, as launched by `torchrun --nproc-per-node N`.

torchrun starts N copies of the command with RANK, WORLD_SIZE and LOCAL_RANK set; `session`
joins them into one process group (NCCL on GPUs, gloo on CPU) and leaves it at the end. A
single process (no torchrun) gets a `Dist` of world size 1 and every helper here does nothing.

Every process reads the same global batch and keeps its own rows (`rows`), so `--batch-size`
means the same thing, and training computes the same thing, whatever the process count.
`wrap` turns the model into DistributedDataParallel (gradients averaged across processes) or,
with `fsdp`, shards parameters, gradients and optimizer state with PyTorch's FSDP
(`fully_shard`, one unit per transformer block). Only rank 0 writes logs and checkpoints, and
checkpoints hold the full model and a full, parameter-name-keyed optimizer state, so they
resume under any process count, with or without FSDP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gptlab.errors import GptlabError
from gptlab.model import Decoder


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that logs, prints and writes files."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without one); valid outside `session`."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def current() -> Dist:
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def session(device: torch.device) -> Iterator[tuple[Dist, torch.device]]:
    """Join torchrun's process group for the duration of a job; yields (Dist, this process's
    device: cuda:LOCAL_RANK on GPUs). Outside torchrun it yields (Dist(), device) unchanged."""
    if not launched() or dist.is_initialized():
        yield current(), device
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield current(), device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 before the other processes: what it downloads or writes into a
    shared cache is then there, complete, when they run it."""
    is_main = current().is_main
    if not is_main:
        barrier()
    yield
    if is_main:
        barrier()


def check_global_batch(batch_size: int, d: Dist) -> None:
    """A job's --batch-size is the global batch: it must split evenly across processes."""
    if batch_size % d.world:
        raise GptlabError(
            f"--batch-size {batch_size} (the global batch) is not divisible by the "
            f"{d.world} processes"
        )


def rows(batch: Any, d: Dist) -> Any:
    """This process's share of a global batch: rows [rank * n / world, (rank + 1) * n / world)
    of every tensor in it (a tensor, or a tuple, list or dict of them)."""
    if d.world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0]
        if n % d.world:
            raise GptlabError(
                f"batch size {n} is not divisible by the {d.world} processes; --batch-size is "
                "the global batch, split evenly across processes"
            )
        share = n // d.world
        return batch[d.rank * share : (d.rank + 1) * share]
    if isinstance(batch, (tuple, list)):
        return type(batch)(rows(b, d) for b in batch)
    if isinstance(batch, dict):
        return {k: rows(v, d) for k, v in batch.items()}
    return batch


def wrap(model: Decoder, device: torch.device, fsdp: bool = False) -> nn.Module:
    """The module to train with: the model itself (one process), DDP around it, or the model
    sharded in place by FSDP. Build the optimizer after this (FSDP replaces parameters)."""
    d = current()
    if fsdp:
        if d.world == 1:
            raise GptlabError("--fsdp needs several processes; launch with torchrun")
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def no_grad_sync(wrapped: nn.Module) -> AbstractContextManager[Any]:
    """Skip the gradient all-reduce of an accumulation micro-step that is not the last."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return wrapped.no_sync()
    if is_sharded(wrapped):
        return _fsdp_no_sync(wrapped)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: Decoder) -> dict[str, torch.Tensor]:
    """The full model weights (gathered from every process under FSDP: call it on all ranks;
    only rank 0's result is complete)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def _param_names(model: Decoder, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state(model: Decoder, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state keyed by parameter name, the same under any process count
    (collective under FSDP, like `model_state`)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options())
    names = _param_names(model, optimizer)
    state = optimizer.state_dict()
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
        ],
    }


def load_optimizer_state(
    model: Decoder, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a state written by `optimizer_state` (by any process count)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True)
        )
        return
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    try:
        optimizer.load_state_dict(
            {
                "state": {index[n]: s for n, s in state["state"].items()},
                "param_groups": [
                    {**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]
                ],
            }
        )
    except (KeyError, ValueError) as exc:
        raise GptlabError(f"checkpoint optimizer state does not fit this model ({exc})") from None
    _lay_out_like_params(optimizer)


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor its parameter's memory layout.

    Why: fused AdamW walks a parameter and its moments as flat memory, so a moment stored in
    another order than its parameter is updated wrongly without an error (torch 2.13). Saved
    states are contiguous, and so are the weights training.train trains; this keeps a
    caller's non-contiguous parameter (a transposed view, say) updated correctly too."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == param.shape
                and value.stride() != param.stride()
            ):
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _summed(values: list[float], dtype: torch.dtype) -> torch.Tensor:
    """`values` summed element-wise over all processes, in one all-reduce (on the GPU under
    NCCL, which reduces nothing else)."""
    t = torch.tensor(values, dtype=dtype)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t


def global_sum(n: int) -> int:
    """`n` summed over all processes (itself without torchrun)."""
    if current().world == 1:
        return n
    return int(_summed([n], torch.int64)[0])


def reduce_step(loss: float, stop: bool) -> tuple[float, bool]:
    """(mean loss over processes, whether any process wants to stop), in one all-reduce, so
    every process sees the same numbers and stops at the same step."""
    if current().world == 1:
        return loss, stop
    t = _summed([loss, float(stop)], torch.float64)
    return float(t[0]) / current().world, bool(t[1] > 0)
