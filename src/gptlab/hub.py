"""Where models come from: everything `--model` / `--base` accepts, resolved in one place.

A spec is, in this order: an OpenAI TensorFlow checkpoint (a folder with model.ckpt.index and
hparams.json, or the checkpoint prefix); a Hugging Face GPT-2 `.safetensors` file; a `.gguf`
file of a Llama-family model (llama.cpp's format, gptlab.formats.gguf); a folder, which is a
Hugging Face GPT-2 folder (its config.json says model_type gpt2), a Hugging Face Llama or
Qwen3 folder (model_type llama / qwen3; single or sharded safetensors,
gptlab.formats.hf_llama), a gptlab model folder of either family, or a run folder (its final
model, else its latest checkpoint); or the name of one of OpenAI's pretrained GPT-2 sizes,
downloaded and converted into a cache on first use; or a Hugging Face repository id
(`owner/name`, e.g. HuggingFaceTB/SmolLM2-135M-Instruct), whose safetensors weights, configs
and tokenizer files are downloaded into the cache on first use and read as the folder they
make.

`load_tokenizer(spec)` gives the tokenizer of the same spec (gptlab.text): a `.gguf` file's
own vocabulary; a folder's tokenizer.json (a Hugging Face folder, or a gptlab model or run
folder that was saved with one); GPT-2's for everything else of GPT-2's (TF checkpoints, HF
GPT-2 files, gptlab folders without a tokenizer.json, the pretrained names).

This is the floor under `gptlab.load` (gptlab.llm), which every verb and the server run
models through: `resolve_with_tokenizer` is what it calls. `resolve_model` alone serves
`convert` (which keeps a model whose tokenizer is unknown) and the fine-tuning bases
(`base_language_model`, `base_with_tokenizer`: "random" or a spec, refusing a classifier).
Each returns its model on the device it was asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gptlab import text
from gptlab.checkpoints import (
    CONFIG,
    TOKENIZER,
    WEIGHTS,
    iter_model_folders,
    load_model_folder,
    save_model,
)
from gptlab.config import OPENAI_SIZES, PRESETS, get_preset
from gptlab.download import download_file
from gptlab.errors import GptlabError
from gptlab.families import config_to_dict, new_model
from gptlab.formats.gguf import build_llama, load_gguf, read_gguf
from gptlab.formats.gguf_quant import load_gguf_quantized
from gptlab.formats.hf import is_hf_folder, load_hf_safetensors
from gptlab.formats.hf_llama import INDEX, is_hf_llama_folder, load_hf_llama
from gptlab.formats.openai_tf import has_tf_files, is_tf_checkpoint, load_tf_checkpoint
from gptlab.io import atomic_write_json, read_json_object
from gptlab.model import Decoder

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


def _foreign(model: Decoder, path: Path) -> tuple[Decoder, dict[str, Any]]:
    """A model read from another program's files, with the config.json gptlab would write."""
    return model, {"format": "gptlab", "model": config_to_dict(model.cfg), "source": str(path)}


def resolve_model(spec: str | Path, device: str = "cpu") -> tuple[Decoder, dict[str, Any]]:
    """The model (in eval mode, on `device`) and its gptlab config for anything `--model`
    accepts (see the module docstring); a spec that is none of them is one GptlabError saying
    why."""
    path = _local(spec)
    if is_tf_checkpoint(path) or (path.is_dir() and has_tf_files(path)):
        model = load_tf_checkpoint(path).to(device)  # a missing index is reported there
        return _foreign(model, path)
    if path.is_file() and path.suffix == ".safetensors":
        return _foreign(load_hf_safetensors(path, device), path)
    if is_gguf(path):  # a missing file is said there
        return _foreign(load_gguf(path).to(device), path)
    if path.is_dir() and is_hf_llama_folder(path):
        return _foreign(load_hf_llama(path, device), path)
    if path.is_dir() and (path / INDEX).is_file() and not (path / CONFIG).is_file():
        raise GptlabError(f"{path}: sharded weights without a config.json")
    if path.exists():
        for folder in iter_model_folders(path):
            if is_hf_folder(folder):
                return _foreign(load_hf_safetensors(folder, device), folder)
            return load_model_folder(folder, device)
        raise GptlabError(
            f"{path}: no model here (expected model.safetensors + config.json, "
            "or a run folder with model/ or checkpoints/)" + _models_below(path)
        )
    if str(spec) in OPENAI_SIZES:
        return load_model_folder(ensure_pretrained(str(spec)), device)
    if str(spec) in PRESETS:
        raise GptlabError(
            f"{spec}: preset {spec!r} has no pretrained weights; train it with "
            f"`gptlab pretrain --preset {spec}` and pass the run folder"
        )
    raise GptlabError(f"{spec}: no such model folder, run folder or preset")


def load_tokenizer(spec: str | Path) -> text.Tokenizer:
    """The tokenizer of the model `spec` names (anything `resolve_model` accepts; see the module
    docstring). A Hugging Face Llama / Qwen3 folder without a tokenizer.json is one GptlabError:
    GPT-2's ids would not be its vocabulary."""
    path = _local(spec)
    if is_gguf(path):
        return text.from_gguf(path)
    if path.is_dir():
        if (path / TOKENIZER).is_file():
            return text.from_tokenizer_json(path)
        if is_hf_llama_folder(path):
            raise GptlabError(f"{path}: no {TOKENIZER} beside the model; its tokenizer is unknown")
        for folder in iter_model_folders(path):
            if (folder / TOKENIZER).is_file():
                return text.from_tokenizer_json(folder)
            break  # the folder resolve_model loads
    return text.gpt2()


class Resolved(NamedTuple):
    """A model, its gptlab config (config.json's contents) and its tokenizer."""

    model: Decoder
    meta: dict[str, Any]
    tokenizer: text.Tokenizer


def resolve_with_tokenizer(spec: str | Path, device: str = "cpu") -> Resolved:
    """`resolve_model(spec, device)` and `load_tokenizer(spec)` together, as running a model
    needs them (gptlab.load); a GGUF file is read once for both (its header alone takes
    seconds to parse)."""
    path = Path(spec)
    if is_gguf(path):
        cfg, tensors, metadata = read_gguf(path)
        model, meta = _foreign(build_llama(cfg, tensors).to(device), path)
        return Resolved(model, meta, text.from_gguf_metadata(metadata, source=path))
    model, meta = resolve_model(spec, device)
    return Resolved(model, meta, load_tokenizer(spec))


def resolve_gguf_quantized(path: Path, mode: str) -> Resolved:
    """A .gguf file's model on the CPU on its own 4- and 8-bit blocks, its other linear
    weights quantized with `mode` (gptlab.formats.gguf_quant), with its tokenizer."""
    model, metadata = load_gguf_quantized(path, mode)
    model, meta = _foreign(model, path)
    return Resolved(model, meta, text.from_gguf_metadata(metadata, source=path))


# A pipeline folder's language models, last tuned first (gptlab.pipeline's stage folders).
PIPELINE_MODELS = ("preference", "instruct", "base")
SHOWN_MODELS = 4  # models listed when a folder holds several and none is meant


def _runs_below(path: Path, depth: int = 2) -> list[Path]:
    """The run and model folders under `path` (not itself), `depth` levels down, sorted."""
    found: list[Path] = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
        if next(iter_model_folders(sub), None) is not None:
            found.append(sub)
        elif depth > 1:
            found += _runs_below(sub, depth - 1)
    return found


def _models_below(path: Path) -> str:
    """The error's end that lists the models found under `path`."""
    runs = _runs_below(path)
    if not runs:
        return ""
    shown = ", ".join(str(r) for r in runs[:SHOWN_MODELS])
    more = f" and {len(runs) - SHOWN_MODELS} more" if len(runs) > SHOWN_MODELS else ""
    return f"; models below it: {shown}{more}"


def _has_model(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and next(iter_model_folders(path), None) is not None)


def _json_field(path: Path, key: str) -> Any:
    return read_json_object(path).get(key) if path.is_file() else None


def _inner_model(path: Path) -> Path:
    """The model a folder without one of its own means: a pipeline folder's last tuned
    language model (preference's, else instruct's, else the base stage's); a stage folder's
    model (the one its results.json names, as the base stage's does, or the one run below
    it); else `path` (whose error then lists the models below it)."""
    if not path.is_dir() or _has_model(path):
        return path
    if _is_pipeline(path):
        for stage in PIPELINE_MODELS:
            inner = _inner_model(path / stage)
            if _has_model(inner):
                return inner
    if not _is_pipeline(path.parent):  # only a pipeline's stage folders mean a model below
        return path
    named = _json_field(path / "results.json", "model")
    if isinstance(named, str) and _has_model(Path(named)):
        return Path(named)
    runs = _runs_below(path)
    return runs[0] if len(runs) == 1 else path


def _is_pipeline(path: Path) -> bool:
    return _json_field(path / CONFIG, "task") == "pipeline"


def _local(spec: str | Path) -> Path:
    """The path behind `spec`: a Hugging Face repository id is its downloaded folder; a
    pipeline or stage folder the model inside it (`_inner_model`)."""
    path = Path(spec)
    if path.exists():
        return _inner_model(path)
    if not isinstance(spec, str) or not REPO_ID.fullmatch(spec):
        return path
    if path.parent.exists():  # runs/typo is a missing folder, not a repository to download
        return path
    try:
        return ensure_hf_repo(spec)
    except GptlabError as exc:
        raise GptlabError(
            f"{spec}: no such file or folder; as a Hugging Face repository: {exc}"
        ) from None


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and not path.is_dir()


def base_language_model(base: str, preset: str, seed: int, device: str = "cpu") -> Decoder:
    """The language model a fine-tuning job starts from: "random" (the `preset` of either
    family, initialised from `seed`) or anything `resolve_model` accepts; a classifier is
    refused."""
    if base == "random":
        torch.manual_seed(seed)
        return new_model(get_preset(preset)).to(device)
    model, _ = resolve_model(base, device=device)
    return _language_model(base, model)


def base_with_tokenizer(
    base: str, preset: str, seed: int, device: str = "cpu"
) -> tuple[Decoder, text.Tokenizer]:
    """`base_language_model` and the base's tokenizer (GPT-2's for "random": the presets
    fine-tuning starts from have its vocabulary); a tokenizer whose ids the model's vocabulary
    cannot hold is refused."""
    if base == "random":
        model, tokenizer = base_language_model(base, preset, seed, device), text.gpt2()
    else:
        model, _, tokenizer = resolve_with_tokenizer(base, device=device)
        _language_model(base, model)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        where = f"preset {preset}" if base == "random" else base
        raise GptlabError(
            f"{where}: the model's vocabulary ({model.cfg.vocab_size}) is smaller than its "
            f"tokenizer's ({tokenizer.name}, {tokenizer.vocab_size})"
        )
    return model, tokenizer


def _language_model(base: str, model: Decoder) -> Decoder:
    if model.cfg.n_classes is not None:
        raise GptlabError(f"{base}: is a classifier; pass a language model as --base")
    return model


# ---- OpenAI's pretrained GPT-2, cached -------------------------------------------------------


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


# ---- Hugging Face repositories (any family), cached --------------------------------------------

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# What a model folder needs; pickled weights (pytorch_model.bin) are never fetched.
HF_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    WEIGHTS,
    INDEX,
)
MANIFEST = "gptlab-download.json"  # written last: a folder that has it is complete


def _repo_files(listing: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The entries of `listing` (the Hub's file list with sizes and LFS hashes) to fetch: the
    files of HF_FILES it has, and the shards a sharded checkpoint's index names."""
    siblings = listing.get("siblings")
    if not isinstance(siblings, list):
        raise GptlabError(f"{source}: the answer has no file list (siblings)")
    files = {f.get("rfilename"): f for f in siblings if isinstance(f, dict)}
    if WEIGHTS not in files and INDEX not in files:
        raise GptlabError(
            f"{source}: no {WEIGHTS} or {INDEX} in this repository "
            "(gptlab reads safetensors weights only)"
        )
    return [files[name] for name in HF_FILES if name in files]


def ensure_hf_repo(
    repo_id: str,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    revision: str = "main",
) -> Path:
    """The local folder of Hugging Face repository `repo_id` at `revision`, downloading its
    weights, configs and tokenizer on first use: each file resumable, retried and checked
    against the size and SHA-256 the Hub lists for it. $HF_TOKEN is sent for gated models."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / "hf" / repo_id / revision
    if (folder / MANIFEST).is_file():
        return folder
    base = (base_url or os.environ.get("HF_ENDPOINT") or HF_URL).rstrip("/")
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    listing_path = folder / ".listing.json"
    listing_path.unlink(missing_ok=True)  # always ask the Hub what the revision holds now
    api = f"{base}/api/models/{repo_id}/revision/{revision}?blobs=true"
    download_file(api, listing_path, progress=False, headers=headers)
    listing = read_json_object(listing_path, "Hugging Face file list")
    wanted = _repo_files(listing, api)

    def fetch(entry: dict[str, Any]) -> Path:
        name = entry["rfilename"]
        lfs = entry.get("lfs") or {}
        return download_file(
            f"{base}/{repo_id}/resolve/{revision}/{name}",
            folder / name,
            sha256=lfs.get("sha256"),
            expected_size=lfs.get("size", entry.get("size")),
            headers=headers,
        )

    for entry in wanted:
        fetch(entry)
    if (folder / INDEX).is_file():
        shards = read_json_object(folder / INDEX, "safetensors index").get("weight_map", {})
        by_name = {f.get("rfilename"): f for f in listing["siblings"] if isinstance(f, dict)}
        for shard in sorted(set(shards.values())):
            if shard not in by_name:
                raise GptlabError(f"{api}: {INDEX} names {shard}, which the repository lacks")
            wanted.append(by_name[shard])
            fetch(by_name[shard])
    listing_path.unlink()
    atomic_write_json(
        folder / MANIFEST,
        {"repo": repo_id, "revision": revision, "files": [f["rfilename"] for f in wanted]},
    )
    return folder
