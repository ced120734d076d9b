"""The Llama family's config (Llama 3.x, SmolLM2, Qwen3) and its published shapes; the
architecture is gptlab.llama."""

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
    `attention_bias` adds biases to q, k, v and o (Hugging Face LlamaConfig.attention_bias).
    `n_classes` is None for a language model and the number of labels for a classifier.
    """

    family: ClassVar[str] = "llama"
    lora_roles: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv": ("attn.q", "attn.k", "attn.v"),
        "attn_proj": ("attn.o",),
        "fc": ("ff.gate", "ff.up"),
        "ff_proj": ("ff.down",),
    }

    vocab_size: int = 49152
    context_length: int = 2048
    emb_dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int | None = None
    hidden_dim: int = 1536
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_eps: float = 1e-5
    tie_weights: bool = True
    qk_norm: bool = False
    attention_bias: bool = False
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
        if self.n_heads % self.n_kv_heads:
            raise GptlabError(
                f"model config: n_heads {self.n_heads} is not a multiple of "
                f"n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise GptlabError(
                f"model config: head_dim must be even for rotary embeddings, got {self.head_dim}"
            )
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
# also against the GGUF metadata of the file the tests load): hidden_size -> emb_dim,
# num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size ->
# hidden_dim, rope_theta -> rope_base, rope_scaling, rms_norm_eps, tie_word_embeddings,
# vocab_size, max_position_embeddings -> context_length.
_LLAMA3_32 = RopeScaling(32.0, 1.0, 4.0, 8192)  # Llama 3.2: "factor": 32.0
_LLAMA3_8 = RopeScaling(8.0, 1.0, 4.0, 8192)  # Llama 3.1: "factor": 8.0
_SMOLLM2 = dict(vocab_size=49152, context_length=8192, rms_eps=1e-5, tie_weights=True)
_LLAMA3 = dict(vocab_size=128256, context_length=131072, rope_base=500000.0, rms_eps=1e-5)
_QWEN3 = dict(
    vocab_size=151936,
    context_length=40960,
    head_dim=128,
    rope_base=1000000.0,
    rms_eps=1e-6,
    qk_norm=True,
)

PRESETS: dict[str, LlamaConfig] = {
    # HuggingFaceTB/SmolLM2-135M, -360M, -1.7B (LlamaForCausalLM)
    "smollm2-135m": LlamaConfig(
        **_SMOLLM2,
        emb_dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        hidden_dim=1536,
        rope_base=100000.0,
    ),
    "smollm2-360m": LlamaConfig(
        **_SMOLLM2,
        emb_dim=960,
        n_layers=32,
        n_heads=15,
        n_kv_heads=5,
        hidden_dim=2560,
        rope_base=100000.0,
    ),
    "smollm2-1.7b": LlamaConfig(
        **_SMOLLM2,
        emb_dim=2048,
        n_layers=24,
        n_heads=32,
        n_kv_heads=32,
        hidden_dim=8192,
        rope_base=130000.0,
    ),
    # meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B (LlamaForCausalLM, "rope_type": "llama3")
    "llama-3.2-1b": LlamaConfig(
        **_LLAMA3,
        emb_dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=8192,
        rope_scaling=_LLAMA3_32,
        tie_weights=True,
    ),
    "llama-3.2-3b": LlamaConfig(
        **_LLAMA3,
        emb_dim=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        hidden_dim=8192,
        rope_scaling=_LLAMA3_32,
        tie_weights=True,
    ),
    "llama-3.1-8b": LlamaConfig(
        **_LLAMA3,
        emb_dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=14336,
        rope_scaling=_LLAMA3_8,
        tie_weights=False,
    ),
    # Qwen/Qwen3-0.6B, -1.7B, -4B, -8B (Qwen3ForCausalLM; head_dim 128 throughout)
    "qwen3-0.6b": LlamaConfig(
        **_QWEN3,
        emb_dim=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        hidden_dim=3072,
        tie_weights=True,
    ),
    "qwen3-1.7b": LlamaConfig(
        **_QWEN3,
        emb_dim=2048,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        hidden_dim=6144,
        tie_weights=True,
    ),
    "qwen3-4b": LlamaConfig(
        **_QWEN3,
        emb_dim=2560,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=9728,
        tie_weights=True,
    ),
    "qwen3-8b": LlamaConfig(
        **_QWEN3,
        emb_dim=4096,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=12288,
        tie_weights=False,
    ),
    # From-scratch shapes for CPU experiments, on gptlab's GPT-2 tokenizer (~7M parameters,
    # like gpt-micro; most of them embeddings).
    "llama-micro": LlamaConfig(
        vocab_size=50257,
        context_length=256,
        emb_dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=384,
        rope_base=10000.0,
    ),
    "qwen3-micro": LlamaConfig(
        vocab_size=50257,
        context_length=256,
        emb_dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=64,
        hidden_dim=384,
        rope_base=1000000.0,
        rms_eps=1e-6,
        qk_norm=True,
    ),
}
