"""The Llama family's config (Llama 3.x, SmolLM2, Qwen2/Qwen2.5, Qwen3) and its published
shapes; the architecture is gptlab.llama."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from gptlab.config.base import ModelConfig
from gptlab.errors import GptlabError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's rotary frequency scaling ("rope_type": "llama3" in Hugging Face configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise GptlabError(f"model config: rope_scaling.factor must be >= 1, got {self.factor}")
        if not 0.0 < self.low_freq_factor < self.high_freq_factor:
            raise GptlabError(
                "model config: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.original_context_length < 1:
            raise GptlabError(
                "model config: rope_scaling.original_context_length must be positive, got "
                f"{self.original_context_length}"
            )


@dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    """Everything that fixes the shape and behaviour of a Llama-family model.

    `head_dim` defaults to emb_dim // n_heads (Llama, SmolLM2); Qwen3 sets it explicitly
    (128 for emb_dim 1024 and 16 heads). `n_kv_heads` must divide `n_heads`.
    `attention_bias` adds biases to q, k, v and o (Hugging Face LlamaConfig.attention_bias);
    `qkv_bias` to q, k and v only, as Qwen2 / Qwen2.5 have them (a flag, not a family of its
    own: the rest of Qwen2 is the Llama block, as Qwen3 is with `qk_norm`).
    `n_classes` is None for a language model and the number of labels for a classifier.
    """

    family: ClassVar[str] = "llama"
    lora_roles: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv": ("attn.q", "attn.k", "attn.v"),
        "attn_proj": ("attn.o",),
        "fc": ("ff.gate", "ff.up"),
        "ff_proj": ("ff.down",),
    }

    # Hugging Face's config.json name, where it differs, on the right.
    vocab_size: int = 49152
    context_length: int = 2048  # max_position_embeddings
    emb_dim: int = 576  # hidden_size
    n_layers: int = 30  # num_hidden_layers
    n_heads: int = 9  # num_attention_heads
    n_kv_heads: int = 3  # num_key_value_heads
    head_dim: int | None = None
    hidden_dim: int = 1536  # intermediate_size
    rope_base: float = 10000.0  # rope_theta
    rope_scaling: RopeScaling | None = None
    rms_eps: float = 1e-5  # rms_norm_eps
    tie_weights: bool = True  # tie_word_embeddings
    qk_norm: bool = False
    attention_bias: bool = False
    qkv_bias: bool = False
    n_classes: int | None = None
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", _rope_scaling(self.rope_scaling))
        if self.head_dim is None and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.emb_dim // self.n_heads)
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
            )
        )
        self._check_rotary_heads()
        if self.rope_base <= 1.0:
            raise GptlabError(f"model config: rope_base must be > 1, got {self.rope_base}")
        if self.rms_eps <= 0.0:
            raise GptlabError(f"model config: rms_eps must be positive, got {self.rms_eps}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise GptlabError(
                f"model config: rope_scaling must be a mapping or None, got {self.rope_scaling!r}"
            )


def _rope_scaling(data: dict[str, Any]) -> RopeScaling:
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GptlabError(f"model config: unknown rope_scaling field(s): {', '.join(unknown)}")
    return RopeScaling(**data)


# Published shapes. Each line was read from the model's config.json on the Hugging Face Hub
# (as quoted in public code, found with the code search of this project's tooling; SmolLM2-135M
# also against the GGUF metadata of the file the tests load), under the names LlamaConfig's
# fields note.
_SMOLLM2 = dict(vocab_size=49152, context_length=8192, rms_eps=1e-5, tie_weights=True)
_LLAMA3 = dict(vocab_size=128256, context_length=131072, rope_base=500000.0, rms_eps=1e-5)
_LLAMA3_2 = dict(_LLAMA3, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_weights=True)
_LLAMA3_1 = dict(_LLAMA3, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), tie_weights=False)
_QWEN3 = dict(
    vocab_size=151936,
    context_length=40960,
    head_dim=128,
    rope_base=1000000.0,
    rms_eps=1e-6,
    qk_norm=True,
)
_QWEN2_5 = dict(vocab_size=151936, rope_base=1000000.0, rms_eps=1e-6, qkv_bias=True)
# gptlab's own from-scratch shapes, on its GPT-2 tokenizer.
_MICRO = dict(vocab_size=50257, context_length=256)


def _shape(
    line: dict[str, Any],
    emb_dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    hidden_dim: int,
    **rest: Any,
) -> LlamaConfig:
    """One preset: what its line of models shares, the five numbers that set its size, and
    whatever else is its own. (A fresh config, not a replace() of another: head_dim is
    derived from emb_dim and n_heads when the line does not set it.)"""
    return LlamaConfig(
        **line,
        emb_dim=emb_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=hidden_dim,
        **rest,
    )


PRESETS: dict[str, LlamaConfig] = {
    # name: _shape(line, emb_dim, n_layers, n_heads, n_kv_heads, hidden_dim, ...)
    # HuggingFaceTB/SmolLM2-135M, -360M, -1.7B (LlamaForCausalLM)
    "smollm2-135m": _shape(_SMOLLM2, 576, 30, 9, 3, 1536, rope_base=100000.0),
    "smollm2-360m": _shape(_SMOLLM2, 960, 32, 15, 5, 2560, rope_base=100000.0),
    "smollm2-1.7b": _shape(_SMOLLM2, 2048, 24, 32, 32, 8192, rope_base=130000.0),
    # meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B (LlamaForCausalLM, "rope_type": "llama3")
    "llama-3.2-1b": _shape(_LLAMA3_2, 2048, 16, 32, 8, 8192),
    "llama-3.2-3b": _shape(_LLAMA3_2, 3072, 28, 24, 8, 8192),
    "llama-3.1-8b": _shape(_LLAMA3_1, 4096, 32, 32, 8, 14336),
    # Qwen/Qwen3-0.6B, -1.7B, -4B, -8B (Qwen3ForCausalLM; head_dim 128 throughout)
    "qwen3-0.6b": _shape(_QWEN3, 1024, 28, 16, 8, 3072, tie_weights=True),
    "qwen3-1.7b": _shape(_QWEN3, 2048, 28, 16, 8, 6144, tie_weights=True),
    "qwen3-4b": _shape(_QWEN3, 2560, 36, 32, 8, 9728, tie_weights=True),
    "qwen3-8b": _shape(_QWEN3, 4096, 36, 32, 8, 12288, tie_weights=False),
    # Qwen/Qwen2.5-0.5B, -1.5B, -3B, -7B (Qwen2ForCausalLM; biases on q, k and v)
    "qwen2.5-0.5b": _shape(_QWEN2_5, 896, 24, 14, 2, 4864, context_length=32768),
    "qwen2.5-1.5b": _shape(_QWEN2_5, 1536, 28, 12, 2, 8960, context_length=131072),
    "qwen2.5-3b": _shape(_QWEN2_5, 2048, 36, 16, 2, 11008, context_length=32768),
    "qwen2.5-7b": _shape(
        dict(_QWEN2_5, vocab_size=152064),
        3584,
        28,
        28,
        4,
        18944,
        context_length=131072,
        tie_weights=False,
    ),
    # ~7M parameters, like gpt-micro; most of them embeddings.
    "llama-micro": _shape(_MICRO, 128, 4, 4, 2, 384, rope_base=10000.0),
    "qwen3-micro": _shape(
        _MICRO, 128, 4, 4, 2, 384, head_dim=64, rope_base=1000000.0, rms_eps=1e-6, qk_norm=True
    ),
    "qwen2.5-micro": _shape(
        _MICRO, 128, 4, 4, 2, 384, rope_base=1000000.0, rms_eps=1e-6, qkv_bias=True
    ),
}
