"""Model configuration: one dataclass and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gptlab.errors import GptlabError
from gptlab.io import read_json_object

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """What every architecture's frozen config dataclass shares: copies with changes, and
    the dict form that model folders store in config.json, read back with clear errors."""

    drop_rate: float  # fields every architecture's dataclass declares (not fields here)
    n_classes: int | None

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


@dataclass(frozen=True)
class GPTConfig(ModelConfig):
    """Everything that fixes the shape and behaviour of a GPT model.

    `n_classes` is None for a language model (the head predicts the vocabulary) and the
    number of labels for a classifier, whose head then maps to classes instead.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    tie_weights: bool = True
    n_classes: int | None = None

    def __post_init__(self) -> None:
        self._check_shared(("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads"))
        if self.emb_dim % self.n_heads:
            raise GptlabError(
                f"model config: emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads


# OpenAI's four GPT-2 sizes, plus small shapes for CPU experiments and tests.
PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # ~30M parameters: the default for pretraining on a laptop CPU.
    "gpt-mini": GPTConfig(context_length=256, emb_dim=384, n_layers=6, n_heads=6),
    # ~7M parameters: seconds per epoch on CPU.
    "gpt-micro": GPTConfig(context_length=256, emb_dim=128, n_layers=4, n_heads=4),
    # ~1.6M parameters, almost all embeddings: for tests.
    "gpt-nano": GPTConfig(context_length=64, emb_dim=32, n_layers=2, n_heads=2),
}

OPENAI_SIZES = {
    "gpt2-small": "124M",
    "gpt2-medium": "355M",
    "gpt2-large": "774M",
    "gpt2-xl": "1558M",
}


def get_preset(name: str) -> GPTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# The Llama family's preset names (gptlab.llama.PRESETS holds the shapes; llama.py imports
# torch, so the names are kept here for settings.py and `--help`; a test keeps them equal).
LLAMA_PRESET_NAMES = (
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen3-0.6b",
    "qwen3-1.7b",
    "qwen3-4b",
    "qwen3-8b",
    "llama-micro",
    "qwen3-micro",
)
# Every preset of both families, as `--preset` offers them.
PRESET_NAMES = (*PRESETS, *LLAMA_PRESET_NAMES)
