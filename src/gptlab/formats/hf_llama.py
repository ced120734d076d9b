"""Hugging Face's Llama, Qwen2 and Qwen3 folders (LlamaForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM), both ways.

Reading: a folder whose config.json says model_type "llama", "qwen2" or "qwen3", with its
weights in `model.safetensors` or sharded as `model-0000x-of-0000y.safetensors` listed by
`model.safetensors.index.json`. Every file is memory-mapped (gptlab.checkpoints
.read_safetensors); float32 tensors enter the model as the mapped tensors themselves, other
float dtypes (bf16, fp16 releases) as one float32 copy each, as gptlab.formats.gguf does.
Both spellings of the rotary settings are read: transformers 4.x's `rope_theta` +
`rope_scaling` and 5.x's `rope_parameters`; rotary types "default" and "llama3" are
supported, others refused.

Writing (`export_hf_llama`): config.json with both spellings (so transformers 4.43+ and 5.x
read it) and one `model.safetensors`, loadable by `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gptlab.checkpoints import CONFIG, WEIGHTS, build_model, read_safetensors
from gptlab.config import Gemma3Config, LlamaConfig, RopeScaling
from gptlab.errors import GptlabError
from gptlab.formats.llama_names import parameter_names
from gptlab.io import atomic_write, atomic_write_json, read_json_object
from gptlab.llama import Llama

MODEL_TYPES = ("llama", "qwen2", "qwen3", "gemma3_text")
INDEX = "model.safetensors.index.json"
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


def hf_model_type(folder: Path) -> str | None:
    """The model_type of a Hugging Face config.json in `folder` ("gpt2", "llama", ...); None
    for a gptlab config.json or no config at all."""
    config = folder / CONFIG
    if not config.is_file():
        return None
    data = read_json_object(config, "model config")
    if data.get("format") == "gptlab":
        return None
    kind = data.get("model_type")
    return kind if isinstance(kind, str) else None


def is_hf_llama_folder(folder: Path) -> bool:
    return hf_model_type(folder) in MODEL_TYPES


def _rope(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    # As transformers 5 reads it (PreTrainedConfig.convert_rope_params_to_dict): a non-empty
    # rope_scaling (4.x) wins over rope_parameters (5.x); rope_theta inside the chosen one
    # wins over the top-level rope_theta (4.x).
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(scaling, dict):
        raise GptlabError(f"{source}: rope_scaling / rope_parameters must be an object or null")
    theta = scaling.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise GptlabError(
            f"{source}: unsupported rope type {kind!r}; gptlab reads 'default' and 'llama3'"
        )
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_context_length=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as exc:
        raise GptlabError(f"{source}: rope scaling field {exc} missing") from None


def _sliding_pattern(hf: dict[str, Any], source: str) -> int:
    """Gemma 3's period of sliding and global layers, from `layer_types` (transformers 4.53+)
    or `sliding_window_pattern`; a layout gptlab's one period cannot say is refused."""
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern", 6))
    pattern = types.index("full_attention") + 1 if "full_attention" in types else len(types) + 1
    want = [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(len(types))
    ]
    if list(types) != want:
        raise GptlabError(f"{source}: layer_types is not a repeating sliding/full pattern")
    return pattern


def _gemma3_rope(hf: dict[str, Any], source: str) -> tuple[float, float, float]:
    """(global base, local base, linear factor) from either spelling of the rotary settings."""
    params = hf.get("rope_parameters") or {}
    full = params.get("full_attention") or {}
    local = params.get("sliding_attention") or {}
    scaling = hf.get("rope_scaling") or full
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise GptlabError(
            f"{source}: unsupported rope type {kind!r}; gptlab reads 'default' and 'linear'"
        )
    factor = float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0
    base = float(full.get("rope_theta", hf.get("rope_theta", 1000000.0)))
    local_base = float(local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0)))
    return base, local_base, factor


@contextmanager
def config_fields(source: str) -> Iterator[None]:
    """A config.json field missing or malformed while a config is built from it, or the
    config's own check failing, as one GptlabError naming `source`."""
    try:
        yield
    except KeyError as exc:
        raise GptlabError(f"{source}: missing field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise GptlabError(f"{source}: bad field value ({exc})") from None
    except GptlabError as exc:
        raise GptlabError(f"{source}: {exc}") from None


def hf_gemma3_config(hf: dict[str, Any], source: str) -> Gemma3Config:
    """A Gemma3Config from a Hugging Face Gemma3ForCausalLM config.json (model_type
    gemma3_text)."""
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise GptlabError(f"{source}: hidden_activation must be gelu_pytorch_tanh")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if hf.get(key) is not None:
            raise GptlabError(f"{source}: {key} is not supported")
    base, local_base, factor = _gemma3_rope(hf, source)
    with config_fields(source):
        return Gemma3Config(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf["max_position_embeddings"]),
            emb_dim=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf["num_key_value_heads"]),
            head_dim=int(hf.get("head_dim", 256)),
            hidden_dim=int(hf["intermediate_size"]),
            rope_base=base,
            rope_local_base=local_base,
            rope_factor=factor,
            sliding_window=int(hf.get("sliding_window", 4096)),
            sliding_pattern=_sliding_pattern(hf, source),
            query_scale=float(hf.get("query_pre_attn_scalar", 256)),
            rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_weights=bool(hf.get("tie_word_embeddings", True)),
        )


def hf_llama_config(hf: dict[str, Any], source: str) -> LlamaConfig | Gemma3Config:
    """A LlamaConfig from a Hugging Face Llama / Qwen2 / Qwen3 config.json (already parsed),
    or a Gemma3Config from a Gemma 3 one."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise GptlabError(f"{source}: model_type {kind!r} is not one of {', '.join(MODEL_TYPES)}")
    if kind == "gemma3_text":
        return hf_gemma3_config(hf, source)
    if hf.get("hidden_act", "silu") != "silu":
        raise GptlabError(f"{source}: hidden_act must be silu, got {hf['hidden_act']!r}")
    if hf.get("mlp_bias", False):
        raise GptlabError(f"{source}: mlp_bias is not supported")
    if kind != "llama" and hf.get("use_sliding_window", False):
        raise GptlabError(f"{source}: sliding-window attention is not supported")
    theta, scaling = _rope(hf, source)
    with config_fields(source):
        n_heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim")
        if head_dim is None:  # transformers' defaults: Llama derives it, Qwen3 says 128
            head_dim = 128 if kind == "qwen3" else int(hf["hidden_size"]) // n_heads
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf["max_position_embeddings"]),
            emb_dim=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            head_dim=int(head_dim),
            hidden_dim=int(hf["intermediate_size"]),
            rope_base=theta,
            rope_scaling=scaling,
            rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_weights=bool(hf.get("tie_word_embeddings", False)),  # transformers' default
            qk_norm=kind == "qwen3",
            attention_bias=kind != "qwen2" and bool(hf.get("attention_bias", False)),
            qkv_bias=kind == "qwen2",  # Qwen2ForCausalLM: always, and nowhere else
        )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: model.safetensors, or the shards its index lists."""
    single, index = folder / WEIGHTS, folder / INDEX
    if single.is_file():
        return [single]
    if not index.is_file():
        raise GptlabError(f"{folder}: no {WEIGHTS} and no {INDEX} (sharded weights)")
    data = read_json_object(index, "weights index")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise GptlabError(f"{index}: no weight_map")
    files = []
    for name in dict.fromkeys(weight_map.values()):
        if not isinstance(name, str) or Path(name).name != name:
            raise GptlabError(f"{index}: bad shard name {name!r}")
        if not (folder / name).is_file():
            raise GptlabError(f"{folder / name}: shard listed in {INDEX} not found")
        files.append(folder / name)
    return files


def load_hf_llama(folder: str | Path, device: str = "cpu") -> Llama:
    """A gptlab Llama from a Hugging Face Llama / Qwen3 folder (see the module docstring)."""
    folder = Path(folder)
    config_path = folder / CONFIG
    cfg = hf_llama_config(read_json_object(config_path, "model config"), str(config_path))
    tensors: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for path in _weight_files(folder):
        for name, value in read_safetensors(path, device=device).items():
            if name in tensors:
                raise GptlabError(f"{path}: tensor {name} also in {where[name].name}")
            tensors[name], where[name] = value, path
    source = str(folder)
    state = {}
    for n in parameter_names(cfg):
        if n.hf not in tensors:
            raise GptlabError(f"{source}: tensor {n.hf} missing")
        value = tensors.pop(n.hf)
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        state[n.gptlab] = value
    tensors.pop("lm_head.weight", None)  # a tied head saved anyway: it is embed_tokens
    extra = sorted(k for k in tensors if not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise GptlabError(f"{where[extra[0]]}: unexpected tensor {extra[0]} for this config")
    return build_model(cfg, state, source)  # type: ignore[return-value]


def _shape_fields(cfg: LlamaConfig | Gemma3Config, kind: str) -> dict[str, Any]:
    """The config.json fields every exported family spells alike: its class and its shape."""
    return {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
    }


def hf_gemma3_config_dict(cfg: Gemma3Config) -> dict[str, Any]:
    """The Gemma3ForCausalLM config.json transformers (4.53+ and 5.x) reads back to `cfg`."""
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_factor != 1.0:
        full = {"rope_type": "linear", "factor": cfg.rope_factor, "rope_theta": cfg.rope_base}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_base}
    return {
        **_shape_fields(cfg, "gemma3_text"),
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.rms_eps,
        "query_pre_attn_scalar": int(cfg.query_scale)
        if cfg.query_scale.is_integer()
        else cfg.query_scale,
        "sliding_window": cfg.sliding_window,
        "layer_types": [
            "sliding_attention" if cfg.is_sliding(i) else "full_attention"
            for i in range(cfg.n_layers)
        ],
        "rope_theta": cfg.rope_base,  # transformers 4.x
        "rope_local_base_freq": cfg.rope_local_base,
        "rope_scaling": None if cfg.rope_factor == 1.0 else full,
        "rope_parameters": {"full_attention": full, "sliding_attention": local},  # 5.x
        "tie_word_embeddings": cfg.tie_weights,
        "attention_bias": False,
        "attention_dropout": cfg.drop_rate,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def hf_llama_config_dict(cfg: LlamaConfig | Gemma3Config) -> dict[str, Any]:
    """The config.json transformers reads back to the same model."""
    if isinstance(cfg, Gemma3Config):
        return hf_gemma3_config_dict(cfg)
    kind = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    if kind == "qwen2" and cfg.attention_bias:
        raise GptlabError(
            "Qwen2ForCausalLM has no output projection bias; this model does not export"
        )
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_context_length,
        }
        rope = {**scaling, "rope_theta": cfg.rope_base}
    config: dict[str, Any] = {
        **_shape_fields(cfg, kind),
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_base,  # transformers 4.x
        "rope_scaling": scaling,
        "rope_parameters": rope,  # transformers 5.x
        "tie_word_embeddings": cfg.tie_weights,
        "attention_dropout": cfg.drop_rate,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if kind == "llama":
        config.update(mlp_bias=False, attention_bias=cfg.attention_bias)
    else:
        if kind == "qwen3":
            config["attention_bias"] = cfg.attention_bias
        config.update(use_sliding_window=False, sliding_window=None)
    return config


def export_hf_llama(model: Llama, directory: str | Path) -> Path:
    """Write `model` as a Hugging Face Llama (or Qwen3, for qk_norm) folder: config.json and
    model.safetensors (the tied head left out, as transformers saves it)."""
    cfg = model.cfg
    if cfg.n_classes is not None:
        raise GptlabError("only language models export to Hugging Face, not a classifier")
    directory = Path(directory)
    params = model.state_dict()
    tensors = {
        n.hf: params[n.gptlab].detach().to("cpu", torch.float32).contiguous()
        for n in parameter_names(cfg)
    }
    atomic_write(
        directory / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    atomic_write_json(directory / CONFIG, hf_llama_config_dict(cfg))
    return directory
