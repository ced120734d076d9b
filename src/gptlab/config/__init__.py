"""The model vocabulary, with no torch: every family's config class, every named shape in one
registry, and the LoRA layer names, for the CLI's `--help` as for the architectures.

Each family writes its config and presets in its own module here (`gpt2`, `llama`, `gemma3`); this
module lists the families once and puts their presets together. The architectures a config
builds are gptlab.families' business.
"""

from __future__ import annotations

from gptlab.config import gemma3, gpt2, llama
from gptlab.config.base import LORA_ROLES, ModelConfig
from gptlab.config.gemma3 import Gemma3Config
from gptlab.config.gpt2 import OPENAI_SIZES, GPTConfig
from gptlab.config.llama import LlamaConfig, RopeScaling
from gptlab.errors import GptlabError

__all__ = [
    "FAMILIES",
    "LORA_LAYERS",
    "LORA_ROLES",
    "OPENAI_SIZES",
    "PRESETS",
    "PRESET_NAMES",
    "GPTConfig",
    "Gemma3Config",
    "LlamaConfig",
    "ModelConfig",
    "RopeScaling",
    "get_preset",
]

# config.json's "family" -> the config class; GPT-2 first (a section without the key is GPT-2).
FAMILIES: dict[str, type[ModelConfig]] = {
    c.family: c for c in (GPTConfig, LlamaConfig, Gemma3Config)
}

# Every named shape of every family (their names do not overlap; a test keeps it so).
PRESETS: dict[str, ModelConfig] = {**gpt2.PRESETS, **llama.PRESETS, **gemma3.PRESETS}
PRESET_NAMES = tuple(PRESETS)  # `--preset`'s choices

# Every block layer a LoRA target may name directly, over all families.
LORA_LAYERS = tuple(dict.fromkeys(layer for c in FAMILIES.values() for layer in c.lora_layers()))


def get_preset(name: str) -> ModelConfig:
    """The config of a named shape, of whichever family; an unknown name is one line listing
    the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
