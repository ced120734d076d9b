"""The model vocabulary (gptlab.config): torch-free, one preset registry over the families,
and each family's LoRA roles and layers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gptlab import config, families
from gptlab.config import gemma3, gpt2, llama
from gptlab.errors import GptlabError


def test_importing_the_vocabulary_imports_no_torch() -> None:
    """settings.py (and so `--help`) imports it: a fresh interpreter must stay torch-free."""
    probe = (
        "import json, sys; from gptlab import config, settings; "
        "print(json.dumps([config.get_preset('llama-micro').family, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["llama", False]


def test_one_registry_over_the_families() -> None:
    every = (*gpt2.PRESETS, *llama.PRESETS, *gemma3.PRESETS)
    assert len(config.PRESETS) == len(every)  # no name shadowed
    assert tuple(config.PRESETS) == config.PRESET_NAMES == every
    for name, cfg in config.PRESETS.items():
        assert config.get_preset(name) is cfg
        assert config.FAMILIES[cfg.family] is type(cfg)
    assert set(families.ARCHITECTURES) == set(config.FAMILIES.values())  # each one builds


def test_unknown_preset_is_one_line_naming_every_family() -> None:
    with pytest.raises(GptlabError) as info:
        config.get_preset("gpt5")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown preset 'gpt5'; choose one of: gpt2-small, ")
    assert message.endswith(
        ", qwen3-micro, qwen2.5-micro, gemma3-270m, gemma3-1b, gemma3-4b, gemma3-micro"
    )


def test_lora_roles_and_layers() -> None:
    for cls in config.FAMILIES.values():
        assert tuple(cls.lora_roles) == config.LORA_ROLES, cls
    assert config.GPTConfig.lora_layers() == ("attn.qkv", "attn.proj", "ff.fc", "ff.proj")
    assert config.LlamaConfig.lora_layers() == (
        "attn.q", "attn.k", "attn.v", "attn.o", "ff.gate", "ff.up", "ff.down",
    )  # fmt: skip
    both = (*config.GPTConfig.lora_layers(), *config.LlamaConfig.lora_layers())
    assert both == config.LORA_LAYERS  # --lora-targets' choices, GPT-2's first
