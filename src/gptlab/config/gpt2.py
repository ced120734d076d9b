"""GPT-2's config, its named shapes, and OpenAI's released sizes (the architecture is
gptlab.model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gptlab.config.base import ModelConfig
from gptlab.errors import GptlabError


@dataclass(frozen=True)
class GPTConfig(ModelConfig):
    """Everything that fixes the shape and behaviour of a GPT model.

    `n_classes` is None for a language model (the head predicts the vocabulary) and the
    number of labels for a classifier, whose head then maps to classes instead.
    """

    family: ClassVar[str] = "gpt2"
    lora_roles: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv": ("attn.qkv",),
        "attn_proj": ("attn.proj",),
        "fc": ("ff.fc",),
        "ff_proj": ("ff.proj",),
    }

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

# OpenAI's released checkpoints: preset name -> the size in their file names.
OPENAI_SIZES = {
    "gpt2-small": "124M",
    "gpt2-medium": "355M",
    "gpt2-large": "774M",
    "gpt2-xl": "1558M",
}
