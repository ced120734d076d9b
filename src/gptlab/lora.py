"""LoRA: low-rank adapters on the linear layers of the transformer blocks.

`apply_lora` freezes the model and wraps chosen nn.Linear layers so that
y = W x + b + (alpha / rank) * B(A(x)), with B initialised to zero (the adapted model starts
equal to the base). `merge_lora` folds B A into W and restores plain nn.Linear layers, giving a
model with the original parameter names and the same outputs; within `adapters_off` the model
computes as its base, adapters skipped.

Targets are named per family; the command line's four roles (gptlab.config.LORA_ROLES) mean
the same in both (each family's config says so in its `lora_roles`):

    name        GPT-2 (gptlab.model)   Llama / Qwen3 (gptlab.llama)
    qkv         attn.qkv               attn.q, attn.k, attn.v  (the three input projections)
    attn_proj   attn.proj              attn.o                  (attention output)
    fc          ff.fc                  ff.gate, ff.up          (feed-forward input side)
    ff_proj     ff.proj                ff.down                 (feed-forward output)

Besides those, a target may name one layer of its family directly (`attn.q`, `ff.gate`,
`attn.qkv`, ...), so that for instance only queries and values get adapters
(`("attn.q", "attn.v")`). A layer named twice gets one adapter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gptlab.config import LORA_ROLES
from gptlab.errors import GptlabError
from gptlab.model import Decoder


def family_targets(model: Decoder) -> dict[str, tuple[str, ...]]:
    """Every target name `model` accepts, each with the block layers it stands for: the
    roles of its family's config, then each of its layers by name."""
    cfg = model.cfg
    return {**cfg.lora_roles, **{layer: (layer,) for layer in cfg.lora_layers()}}


def resolve_targets(model: Decoder, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The block layers (`attn.q`, ...) behind `targets` for `model`'s family, each once."""
    known = family_targets(model)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise GptlabError(f"unknown LoRA target {unknown[0]!r}; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(layer for t in targets for layer in known[t]))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise GptlabError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.scale = alpha / rank
        self.enabled = True  # off: the base layer alone (`adapters_off`)
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def apply_lora(
    model: Decoder, rank: int, alpha: float, targets: tuple[str, ...] = LORA_ROLES
) -> int:
    """Freeze every parameter, then add trainable adapters to `targets` (names of the module
    docstring, for `model`'s family) in every block. Returns the number of adapter
    parameters."""
    layers = resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    added = 0
    for block in model.blocks:
        for target in layers:
            parent_name, attr = target.split(".")
            parent = getattr(block, parent_name)
            layer = LoRALinear(getattr(parent, attr), rank, alpha)
            setattr(parent, attr, layer)
            added += layer.lora_a.numel() + layer.lora_b.numel()
    return added


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """While active, every adapter of `model` is skipped: the model computes as its frozen
    base (preference tuning's reference, with no second copy of the weights)."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def merge_lora(model: Decoder) -> Decoder:
    """Fold every adapter into its base weight, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model
