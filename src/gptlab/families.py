"""Model families: which architecture a config belongs to, in one place.

gptlab builds two families of decoders: "gpt2" (gptlab.config.GPTConfig -> gptlab.model.GPT)
and "llama" (gptlab.llama.LlamaConfig -> gptlab.llama.Llama, which covers Llama 3.x, SmolLM2
and Qwen3). A gptlab config.json names the family in its model section, `"family": "llama"`;
a section without the key is GPT-2, so every folder written before families existed loads
unchanged, and GPT-2 folders are still written without it (byte for byte as before).

Everything that turns a config dict into a model, or a model back into a dict, goes through
here: `config_from_dict`, `config_to_dict`, `new_model` and `model_class`.
"""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from gptlab import config as gpt2_config
from gptlab import llama
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.llama import Llama, LlamaConfig
from gptlab.model import GPT

ModelConfig = Union[GPTConfig, LlamaConfig]  # noqa: UP007 (a runtime alias)
Model = Union[GPT, Llama]  # noqa: UP007

DEFAULT = "gpt2"
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "gpt2": (GPTConfig, GPT),
    "llama": (LlamaConfig, Llama),
}


def family_of(cfg: ModelConfig) -> str:
    """ "gpt2" or "llama" for a config object."""
    for name, (config_class, _) in FAMILIES.items():
        if type(cfg) is config_class:
            return name
    raise GptlabError(f"not a gptlab model config: {type(cfg).__name__}")


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    """The nn.Module class a config builds (GPT or Llama)."""
    return FAMILIES[family_of(cfg)][1]


def new_model(cfg: ModelConfig) -> Model:
    """A model of `cfg`'s family, randomly initialised (or empty under torch.device("meta"))."""
    return model_class(cfg)(cfg)  # type: ignore[return-value]


def config_from_dict(data: dict[str, Any], source: str = "config") -> ModelConfig:
    """The config behind a config.json model section; `family` picks the class (absent:
    gpt2). Unknown families and fields are one GptlabError naming `source`."""
    if not isinstance(data, dict):
        raise GptlabError(f"{source}: the model section must be a JSON object")
    data = dict(data)
    family = data.pop("family", DEFAULT)
    if family not in FAMILIES:
        raise GptlabError(
            f"{source}: unknown model family {family!r}; gptlab builds {', '.join(FAMILIES)}"
        )
    config_class = FAMILIES[family][0]
    try:
        return config_class.from_dict(data, source=source)
    except TypeError as exc:  # a field of the wrong kind (e.g. a list where a number goes)
        raise GptlabError(f"{source}: bad model config ({exc})") from None
    except GptlabError as exc:
        message = str(exc)
        raise GptlabError(message if source in message else f"{source}: {message}") from None


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json model section: the config's fields, plus `family` for every family
    but GPT-2 (whose sections stay exactly what they were)."""
    family = family_of(cfg)
    data = cfg.to_dict()
    return data if family == DEFAULT else {"family": family, **data}


PRESET_FAMILIES: dict[str, str] = {
    **dict.fromkeys(gpt2_config.PRESETS, "gpt2"),
    **dict.fromkeys(llama.PRESETS, "llama"),
}


def get_preset(name: str) -> ModelConfig:
    """A named shape of either family (GPT-2's and Llama's preset names do not overlap)."""
    if name in gpt2_config.PRESETS:
        return gpt2_config.PRESETS[name]
    if name in llama.PRESETS:
        return llama.PRESETS[name]
    raise GptlabError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_FAMILIES)}")
