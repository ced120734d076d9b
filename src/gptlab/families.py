"""Model families: which architecture a config builds, in one place.

gptlab builds three families of decoders: "gpt2" (gptlab.config.GPTConfig ->
gptlab.model.GPT), "llama" (gptlab.config.LlamaConfig -> gptlab.llama.Llama, which covers Llama
3.x, SmolLM2, Qwen2/Qwen2.5 and Qwen3) and "gemma3" (gptlab.config.Gemma3Config ->
gptlab.gemma3.Gemma3). A config class names its family (`GPTConfig.family`); gptlab.config
lists the families and their presets without torch. A gptlab config.json names the family in
its model section, `"family": "llama"`; a section without the key is GPT-2, so every folder written
before families existed loads unchanged, and GPT-2 folders are still written without it
(byte for byte as before).

Everything that turns a config dict into a model, or a model back into a dict, goes through
here: `config_from_dict`, `config_to_dict`, `new_model` and `model_class`.
"""

from __future__ import annotations

from typing import Any

from gptlab.config import FAMILIES, Gemma3Config, GPTConfig, LlamaConfig, ModelConfig
from gptlab.errors import GptlabError
from gptlab.gemma3 import Gemma3
from gptlab.llama import Llama
from gptlab.model import GPT, Decoder

# Each family's config class -> the decoder it builds.
ARCHITECTURES: dict[type[ModelConfig], type[Decoder]] = {
    GPTConfig: GPT,
    LlamaConfig: Llama,
    Gemma3Config: Gemma3,
}
DEFAULT = GPTConfig.family


def family_of(cfg: ModelConfig) -> str:
    """ "gpt2", "llama" or "gemma3" for a config object: its class's `family`."""
    model_class(cfg)  # refuses what is not a gptlab config
    return cfg.family


def model_class(cfg: ModelConfig) -> type[Decoder]:
    """The Decoder class a config builds (GPT, Llama or Gemma3)."""
    architecture = ARCHITECTURES.get(type(cfg))
    if architecture is None:
        raise GptlabError(f"not a gptlab model config: {type(cfg).__name__}")
    return architecture


def new_model(cfg: ModelConfig) -> Decoder:
    """A model of `cfg`'s family, randomly initialised (or empty under torch.device("meta"))."""
    return model_class(cfg)(cfg)


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
    try:
        return FAMILIES[family].from_dict(data, source=source)
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
