"""The Gemma 3 family's config and its published shapes (text model); the architecture is
gptlab.gemma3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gptlab.config.base import ModelConfig
from gptlab.config.llama import LlamaConfig
from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Gemma3Config(ModelConfig):
    """Everything that fixes the shape and behaviour of a Gemma 3 text model.

    Layer i attends within the last `sliding_window` positions with rotary base
    `rope_local_base`, except every `sliding_pattern`-th layer (i + 1 divisible by it), which
    attends globally with `rope_base` and linear rope scaling `rope_factor` (4B: 8). Queries
    are scaled by query_pre_attn_scalar ** -0.5 (`query_scale`), not head_dim ** -0.5.
    """

    family: ClassVar[str] = "gemma3"
    lora_roles: ClassVar[dict[str, tuple[str, ...]]] = LlamaConfig.lora_roles
    # What the shared attention module (gptlab.llama) asks of a config: Gemma 3 has q/k norms
    # and no attention biases, always.
    qk_norm: ClassVar[bool] = True
    attention_bias: ClassVar[bool] = False
    qkv_bias: ClassVar[bool] = False

    # Hugging Face's Gemma3TextConfig name, where it differs, on the right.
    vocab_size: int = 262144
    context_length: int = 32768  # max_position_embeddings
    emb_dim: int = 640  # hidden_size
    n_layers: int = 18  # num_hidden_layers
    n_heads: int = 4  # num_attention_heads
    n_kv_heads: int = 1  # num_key_value_heads
    head_dim: int = 256
    hidden_dim: int = 2048  # intermediate_size
    rope_base: float = 1000000.0  # rope_theta (global layers)
    rope_local_base: float = 10000.0  # rope_local_base_freq (sliding layers)
    rope_factor: float = 1.0  # rope_scaling {"rope_type": "linear", "factor": ...}
    sliding_window: int = 512
    sliding_pattern: int = 6  # layer_types: five sliding, then one global
    query_scale: float = 256.0  # query_pre_attn_scalar
    rms_eps: float = 1e-6  # rms_norm_eps
    tie_weights: bool = True  # tie_word_embeddings
    n_classes: int | None = None
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        self._check_shared(
            (
                "vocab_size",
                "context_length",
                "emb_dim",
                "n_layers",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "hidden_dim",
                "sliding_window",
                "sliding_pattern",
            )
        )
        self._check_rotary_heads()
        for name in ("rope_base", "rope_local_base"):
            if getattr(self, name) <= 1.0:
                raise GptlabError(f"model config: {name} must be > 1, got {getattr(self, name)}")
        for name in ("rope_factor", "query_scale", "rms_eps"):
            if getattr(self, name) <= 0.0:
                raise GptlabError(
                    f"model config: {name} must be positive, got {getattr(self, name)}"
                )

    def is_sliding(self, layer: int) -> bool:
        """Whether block `layer` attends within the sliding window (else: globally)."""
        return (layer + 1) % self.sliding_pattern != 0


# Published shapes, from each model's config.json on the Hugging Face Hub (text config),
# under the names Gemma3Config's fields note.
_GEMMA3 = dict(context_length=32768, head_dim=256, query_scale=256.0, rms_eps=1e-6)


def _shape(emb_dim: int, n_layers: int, n_heads: int, n_kv_heads: int, hidden_dim: int,
           **rest: Any) -> Gemma3Config:  # fmt: skip
    return Gemma3Config(
        **{**_GEMMA3, **rest},
        emb_dim=emb_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=hidden_dim,
    )


PRESETS: dict[str, Gemma3Config] = {
    # name: _shape(emb_dim, n_layers, n_heads, n_kv_heads, hidden_dim, ...)
    # google/gemma-3-270m, gemma-3-1b-pt (Gemma3ForCausalLM), gemma-3-4b-pt's text model
    "gemma3-270m": _shape(640, 18, 4, 1, 2048, sliding_window=512),
    "gemma3-1b": _shape(1152, 26, 4, 1, 6912, sliding_window=512),
    "gemma3-4b": _shape(
        2560,
        34,
        8,
        4,
        10240,
        sliding_window=1024,
        vocab_size=262208,
        context_length=131072,
        rope_factor=8.0,
    ),
    # ~7M parameters on gptlab's GPT-2 tokenizer, like llama-micro; window 64 so that a short
    # training context already meets both kinds of layer.
    "gemma3-micro": _shape(
        128,
        6,
        4,
        2,
        384,
        vocab_size=50257,
        context_length=256,
        head_dim=32,
        query_scale=32.0,
        sliding_window=64,
    ),
}
