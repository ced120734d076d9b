"""OpenAI's pretrained GPT-2: fetch it, convert it, and trade it with Hugging Face.

Three spellings of the same weights map one to one onto gptlab's parameter names:
OpenAI's TensorFlow variables (`model/h0/attn/c_attn/w`, Conv1D weights stored [1, in, out]),
Hugging Face's GPT-2 safetensors (`h.0.attn.c_attn.weight`, Conv1D weights [in, out], with or
without a `transformer.` prefix) and gptlab's (`blocks.0.attn.qkv.weight`, nn.Linear [out, in]).
The fused q|k|v projection has the same layout in all three, so a mapping is a rename plus,
for the four Conv1D matrices of each block, a transpose.

Loading never holds two copies: models are built on the meta device and given the tensors
(`build_model`), safetensors files are memory-mapped, and an HF file's Conv1D weights enter
the model as transposed views of the mapped file rather than as copies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file

from gptlab.checkpoints import (
    CONFIG,
    WEIGHTS,
    atomic_write,
    atomic_write_json,
    build_model,
    load_model,
    read_safetensors,
    save_model,
)
from gptlab.config import OPENAI_SIZES, GPTConfig
from gptlab.download import download_file
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tf_checkpoint import TFCheckpoint
from gptlab.tokenizer import EOT_ID

OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "vocab.bpe",
    "model.ckpt.index",
    "model.ckpt.meta",
    "model.ckpt.data-00000-of-00001",
)
HF_URL = "https://huggingface.co"
HF_REPOS = {
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# GPT-2's head counts by width: HF weight files alone do not say how many heads there are.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
HF_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some old files carry


class Name(NamedTuple):
    """One parameter in the three spellings; `conv` marks a Conv1D matrix (transposed)."""

    gptlab: str
    openai: str
    hf: str
    conv: bool = False


def parameter_names(n_layers: int) -> list[Name]:
    names = [Name("tok_emb.weight", "model/wte", "wte.weight")]
    names.append(Name("pos_emb.weight", "model/wpe", "wpe.weight"))
    for i in range(n_layers):
        g, o, h = f"blocks.{i}.", f"model/h{i}/", f"h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            names.append(Name(f"{g}{ours}.weight", f"{o}{theirs}/g", f"{h}{theirs}.weight"))
            names.append(Name(f"{g}{ours}.bias", f"{o}{theirs}/b", f"{h}{theirs}.bias"))
        for ours, theirs in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("ff.fc", "mlp.c_fc"),
            ("ff.proj", "mlp.c_proj"),
        ):
            tf_name = o + theirs.replace(".", "/")
            names.append(Name(f"{g}{ours}.weight", f"{tf_name}/w", f"{h}{theirs}.weight", True))
            names.append(Name(f"{g}{ours}.bias", f"{tf_name}/b", f"{h}{theirs}.bias"))
    names.append(Name("final_norm.weight", "model/ln_f/g", "ln_f.weight"))
    names.append(Name("final_norm.bias", "model/ln_f/b", "ln_f.bias"))
    return names


def expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """gptlab parameter shapes for `cfg`, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- OpenAI's TensorFlow checkpoints ---------------------------------------------------------


def config_from_hparams(path: Path) -> GPTConfig:
    try:
        hp = json.loads(path.read_text(encoding="utf-8"))
        return GPTConfig(
            vocab_size=hp["n_vocab"],
            context_length=hp["n_ctx"],
            emb_dim=hp["n_embd"],
            n_layers=hp["n_layer"],
            n_heads=hp["n_head"],
        )
    except FileNotFoundError:
        raise GptlabError(f"{path}: hparams.json not found beside the checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: not valid JSON ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise GptlabError(f"{path}: missing or bad field {exc}") from None
    except GptlabError as exc:  # e.g. n_embd not divisible by n_head
        raise GptlabError(f"{path}: {exc}") from None


def tf_prefix(source: Path) -> Path:
    """The checkpoint prefix in a folder of OpenAI's files (or the prefix itself)."""
    if source.is_dir():
        return source / "model.ckpt"
    return Path(str(source).removesuffix(".index"))


def load_tf_checkpoint(source: str | Path) -> GPT:
    """A gptlab GPT from OpenAI's TensorFlow checkpoint (a folder, or the checkpoint prefix with
    hparams.json beside it). Every shape is checked before any tensor is read, and every tensor's
    CRC32C as it is read; nothing is returned unless all of it is right."""
    prefix = tf_prefix(Path(source))
    hparams = prefix.parent / "hparams.json"
    cfg = config_from_hparams(hparams)
    ckpt = TFCheckpoint(prefix)
    names = parameter_names(cfg.n_layers)
    shapes = expected_shapes(cfg)
    wanted = {n.openai for n in names}
    extra = sorted(k for k in ckpt.entries if k.startswith("model/") and k not in wanted)
    if extra:
        raise GptlabError(
            f"{ckpt.index_path}: tensor {extra[0]} is not in a GPT-2 with {hparams}'s "
            f"n_layer={cfg.n_layers}"
        )
    for n in names:
        entry = ckpt.entries.get(n.openai)
        if entry is None:
            raise GptlabError(f"{ckpt.index_path}: tensor {n.openai} missing")
        want = shapes[n.gptlab]
        want = (1, *reversed(want)) if n.conv else want
        if entry.shape != want:
            raise GptlabError(
                f"{ckpt.index_path}: tensor {n.openai} has shape {entry.shape}, "
                f"{hparams} implies {want}"
            )
    state = {}
    for n in names:
        value = ckpt.read(n.openai)
        state[n.gptlab] = torch.from_numpy(np.array(value[0].T if n.conv else value, order="C"))
    ckpt.close()
    return build_model(cfg, state, str(ckpt.index_path))


# ---- Hugging Face's GPT-2 safetensors --------------------------------------------------------


def hf_config(path: Path, tensors: dict[str, torch.Tensor]) -> GPTConfig:
    """The config of an HF GPT-2 file: from config.json beside it if there is one, else from the
    tensor shapes and GPT-2's head count for that width."""
    config_path = path.parent / "config.json"
    if config_path.is_file():
        try:
            hf = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GptlabError(f"{config_path}: not valid JSON ({exc})") from None
        if isinstance(hf, dict) and hf.get("model_type") == "gpt2":
            if hf.get("activation_function", "gelu_new") != "gelu_new":
                raise GptlabError(f"{config_path}: activation_function must be gelu_new")
            try:
                return GPTConfig(
                    vocab_size=hf["vocab_size"],
                    context_length=hf["n_positions"],
                    emb_dim=hf["n_embd"],
                    n_layers=hf["n_layer"],
                    n_heads=hf["n_head"],
                    tie_weights=hf.get("tie_word_embeddings", True),
                )
            except KeyError as exc:
                raise GptlabError(f"{config_path}: missing field {exc}") from None
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        raise GptlabError(f"{path}: not a GPT-2 weights file (no wte.weight / wpe.weight)")
    vocab, emb = tensors["wte.weight"].shape
    if emb not in GPT2_HEADS:
        raise GptlabError(
            f"{path}: width {emb} is not a GPT-2 size; put its HF config.json beside it"
        )
    n_layers = sum(1 for k in tensors if k.startswith("h.") and k.endswith(".ln_1.weight"))
    return GPTConfig(
        vocab_size=vocab,
        context_length=tensors["wpe.weight"].shape[0],
        emb_dim=emb,
        n_layers=n_layers,
        n_heads=GPT2_HEADS[emb],
    )


def load_hf_safetensors(path: str | Path, device: str = "cpu") -> GPT:
    """A gptlab GPT from Hugging Face's GPT-2 `model.safetensors`, read memory-mapped: Conv1D
    weights become transposed views of the file, which is already the input-major layout the
    model keeps for qkv and fc (GPT.apply_weight_layout); only the two projections are copied."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    raw = read_safetensors(path, device=device)
    tensors = {
        k.removeprefix("transformer."): v for k, v in raw.items() if not k.endswith(HF_IGNORED)
    }
    cfg = hf_config(path, tensors)
    state = {}
    for n in parameter_names(cfg.n_layers):
        if n.hf not in tensors:
            raise GptlabError(f"{path}: tensor {n.hf} missing")
        value = tensors.pop(n.hf)
        if n.conv and value.dim() != 2:
            raise GptlabError(f"{path}: tensor {n.hf} has shape {tuple(value.shape)}, not 2-D")
        state[n.gptlab] = value.t() if n.conv else value
    head = tensors.pop("lm_head.weight", None)
    if not cfg.tie_weights:
        if head is None:
            raise GptlabError(f"{path}: tensor lm_head.weight missing (untied head)")
        state["out_head.weight"] = head
    if tensors:
        raise GptlabError(f"{path}: unexpected tensor {sorted(tensors)[0]} for GPT-2")
    return build_model(cfg, state, str(path))


def export_hf(model: GPT, directory: str | Path) -> Path:
    """Write `model` as Hugging Face GPT-2 (config.json + model.safetensors), loadable by
    `transformers.GPT2LMHeadModel.from_pretrained(directory)` with the same logits."""
    cfg = model.cfg
    if cfg.n_classes is not None or not cfg.qkv_bias:
        raise GptlabError(
            "only GPT-2 language models export to Hugging Face (no classifier head, qkv_bias)"
        )
    directory = Path(directory)
    params = model.state_dict()
    tensors = {
        f"transformer.{n.hf}": (params[n.gptlab].t() if n.conv else params[n.gptlab])
        .detach()
        .cpu()
        .contiguous()
        for n in parameter_names(cfg.n_layers)
    }
    if not model.tied:
        tensors["lm_head.weight"] = params["out_head.weight"].detach().cpu().contiguous()
    eot = EOT_ID if cfg.vocab_size > EOT_ID else None  # a reduced test vocabulary has none
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": model.tied,
    }
    atomic_write(
        directory / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    atomic_write_json(directory / CONFIG, config)
    return directory


# ---- any source, and the pretrained cache ----------------------------------------------------


def is_tf_checkpoint(path: Path) -> bool:
    return Path(str(tf_prefix(path)) + ".index").is_file()


def is_hf_source(path: Path) -> bool:
    """An HF GPT-2 weights file, or a folder whose config.json says model_type gpt2."""
    if path.is_file():
        return path.suffix == ".safetensors"
    config = path / CONFIG
    if not (path / WEIGHTS).is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "gpt2"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_any(spec: str | Path, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A model from anything gptlab reads: an OpenAI TF checkpoint (folder or prefix), an HF
    GPT-2 safetensors file or folder, or whatever `load_model` accepts."""
    path = Path(spec)
    if is_tf_checkpoint(path):
        model = load_tf_checkpoint(path)
    elif path.exists() and is_hf_source(path):
        model = load_hf_safetensors(path, device)
    else:
        return load_model(spec, device)
    return model, {"format": "gptlab", "model": model.cfg.to_dict(), "source": str(path)}


def default_cache_dir() -> Path:
    """$GPTLAB_CACHE, else $XDG_CACHE_HOME/gptlab, else ~/.cache/gptlab."""
    if env := os.environ.get("GPTLAB_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptlab"


def download_pretrained(
    name: str, cache_dir: Path, base_url: str | None = None, source: str = "openai"
) -> Path:
    """Fetch the original files of a pretrained GPT-2 into the cache; returns the TF checkpoint
    folder (source "openai") or the HF safetensors file (source "hf")."""
    if name not in OPENAI_SIZES:
        choices = ", ".join(OPENAI_SIZES)
        raise GptlabError(f"{name}: not a pretrained GPT-2; choose one of {choices}")
    if source == "hf":
        url = f"{(base_url or HF_URL).rstrip('/')}/{HF_REPOS[name]}/resolve/main/{WEIGHTS}"
        return download_file(url, cache_dir / "hf" / name / WEIGHTS)
    if source != "openai":
        raise GptlabError(f"unknown source {source!r}; use openai or hf")
    size = OPENAI_SIZES[name]
    folder = cache_dir / "openai" / size
    for file in OPENAI_FILES:
        download_file(f"{(base_url or OPENAI_URL).rstrip('/')}/{size}/{file}", folder / file)
    return folder


def ensure_pretrained(
    name: str, cache_dir: Path | None = None, base_url: str | None = None, source: str = "openai"
) -> Path:
    """The gptlab model folder of pretrained GPT-2 `name`, downloading and converting it on
    first use. config.json is written last, so a folder that has one is complete."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / "models" / name
    if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
        return folder
    original = download_pretrained(name, cache_dir, base_url, source)
    model = load_hf_safetensors(original) if source == "hf" else load_tf_checkpoint(original)
    return save_model(model, folder, {"source": f"{source}:{name}"})
