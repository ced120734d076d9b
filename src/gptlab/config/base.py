"""What every family's model config shares: the base class of the frozen config dataclasses,
and the four LoRA roles each family maps onto its own layers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from gptlab.errors import GptlabError
from gptlab.io import read_json_object

C = TypeVar("C", bound="ModelConfig")

# The LoRA targets the command line offers for every family (--lora-targets' default):
# attention input and output, feed-forward input and output. Each family's `lora_roles` says
# which of its layers each one stands for.
LORA_ROLES = ("qkv", "attn_proj", "fc", "ff_proj")


class ModelConfig:
    """What every family's frozen config dataclass shares: its family name, its LoRA layers,
    copies with changes, and the dict form that model folders store in config.json, read back
    with clear errors."""

    # The family's name: config.json's "family" key (gptlab.families maps it to a model).
    family: ClassVar[str]
    # LORA_ROLES -> the block layers ("attn.q", ...) each role stands for, in this family.
    lora_roles: ClassVar[dict[str, tuple[str, ...]]]

    # Fields every family's dataclass declares (declared there, not fields here).
    vocab_size: int
    context_length: int
    emb_dim: int
    n_layers: int
    n_heads: int
    head_dim: int
    tie_weights: bool
    drop_rate: float
    n_classes: int | None

    @classmethod
    def lora_layers(cls) -> tuple[str, ...]:
        """Every block layer LoRA may adapt in this family, in the roles' order."""
        return tuple(dict.fromkeys(layer for layers in cls.lora_roles.values() for layer in layers))

    def _check_shared(self, sizes: tuple[str, ...]) -> None:
        """The checks every architecture's config makes: the `sizes` fields positive, dropout
        in [0, 1), a classifier of at least two classes."""
        for name in sizes:
            if getattr(self, name) < 1:
                raise GptlabError(
                    f"model config: {name} must be positive, got {getattr(self, name)}"
                )
        if not 0.0 <= self.drop_rate < 1.0:
            raise GptlabError(f"model config: drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.n_classes is not None and self.n_classes < 2:
            raise GptlabError(f"model config: n_classes must be at least 2, got {self.n_classes}")

    def _check_rotary_heads(self) -> None:
        """Grouped-query attention with rotary embeddings (Llama, Gemma 3): n_kv_heads divides
        n_heads, and head_dim is even."""
        n_kv_heads = getattr(self, "n_kv_heads", self.n_heads)
        if self.n_heads % n_kv_heads:
            raise GptlabError(
                f"model config: n_heads {self.n_heads} is not a multiple of n_kv_heads {n_kv_heads}"
            )
        if self.head_dim % 2:
            raise GptlabError(
                f"model config: head_dim must be even for rotary embeddings, got {self.head_dim}"
            )

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise GptlabError(f"{source}: unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        return cls.from_dict(read_json_object(path, "model config"), source=str(path))
