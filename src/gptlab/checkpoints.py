"""gptlab's own files: model folders and training checkpoints, no unpickling of foreign files.

A *model folder* holds `model.safetensors` and `config.json` ({"format": "gptlab", "model":
{...GPTConfig or LlamaConfig...}, plus task metadata such as label names}); the model section
of a Llama-family model says `"family": "llama"`, one without a family is GPT-2 (see
gptlab.families). A training checkpoint is a model
folder plus `train_state.pt` (optimizer, RNG states, step), read back with
`torch.load(weights_only=True)`. Checkpoints live in `RUN/checkpoints/step-NNNNNN/`, and
`RUN/checkpoints/LATEST` names the newest complete one: it is only updated after the folder is
fully written and renamed into place, so a crash mid-save never leaves a broken latest.

A model folder may also hold its tokenizer, as Hugging Face writes one: `tokenizer.json`,
`tokenizer_config.json` (special tokens, chat template) and `generation_config.json` (stop
ids). GPT-2 folders have none (GPT-2's tokenizer is gptlab's own); `save_model(...,
tokenizer=...)` writes them for any other (a converted GGUF or Hugging Face model).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.families import config_from_dict, config_to_dict, new_model
from gptlab.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    read_json_object,
)
from gptlab.model import Decoder

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"


def _state_to_save(
    model: Decoder, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict() if state is None else state)
    if model.tied:
        state.pop("out_head.weight", None)  # the same tensor as tok_emb.weight
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_model(
    model: Decoder,
    directory: str | Path,
    meta: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write a model folder (weights + config), each file atomically. `weights` replaces the
    model's own state, e.g. full weights gathered from FSDP shards. A `tokenizer` other than
    GPT-2's (a gptlab.text.HFTokenizer) is saved beside them (see `save_tokenizer`)."""
    directory = Path(directory)
    if tokenizer is not None and getattr(tokenizer, "backend", None) is not None:
        save_tokenizer(tokenizer, directory)
    state = _state_to_save(model, weights)
    try:
        atomic_write(
            directory / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"})
        )
    except SafetensorError as exc:  # the Rust writer's I/O errors, such as a full disk
        raise GptlabError(f"{directory / WEIGHTS}: cannot write ({exc})") from None
    config = {"format": "gptlab", "model": config_to_dict(model.cfg), **(meta or {})}
    atomic_write_json(directory / CONFIG, config)
    return directory


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """Write a gptlab.text.HFTokenizer as tokenizer.json + tokenizer_config.json (its special
    tokens, chat template and add_bos) + generation_config.json (its stop ids), files that
    gptlab.text.from_tokenizer_json (and transformers) read back to the same tokenizer."""
    directory = Path(directory)
    text = tokenizer.backend.to_str()
    atomic_write_text(directory / TOKENIZER, text)
    config: dict[str, Any] = {
        **tokenizer.special_tokens,
        "add_bos_token": bool(tokenizer.add_bos),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    atomic_write_json(directory / TOKENIZER_CONFIG, config)
    atomic_write_json(directory / GENERATION_CONFIG, {"eos_token_id": list(tokenizer.stop_ids)})


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG
    data = read_json_object(path, "gptlab model config")
    if data.get("format") != "gptlab" or "model" not in data:
        raise GptlabError(f"{path}: not a gptlab model config (expected format 'gptlab')")
    return data


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a one-line error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptlabError(
            f"{path}: cannot read weights ({exc}); the file may be truncated"
        ) from None


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Decoder:
    """A model of `cfg`'s family (GPT or Llama) holding exactly `state`, built without
    allocating a second, random copy first: every key and shape is checked."""
    with torch.device("meta"):
        model = new_model(cfg)
    expected = model.state_dict()
    if model.tied:
        expected.pop("out_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise GptlabError(f"{source}: tensor {missing[0]} missing ({len(missing)} missing in all)")
    if unexpected:
        raise GptlabError(f"{source}: unexpected tensor {unexpected[0]} for this model config")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise GptlabError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"the config implies {tuple(ref.shape)}"
            )
    model.load_state_dict(state, strict=False, assign=True)
    if model.tied:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()


def load_model_folder(directory: str | Path, device: str = "cpu") -> tuple[Decoder, dict[str, Any]]:
    """Load a model folder; returns the model (in eval mode) and its config.json. A training
    checkpoint of a LoRA run (config "lora", weights holding base layers and adapters) loads
    with the adapters merged, as the run's final model is saved."""
    directory = Path(directory)
    meta = read_config(directory)
    cfg = config_from_dict(meta["model"], source=str(directory / CONFIG))
    state = read_safetensors(directory / WEIGHTS, device=device)
    if meta.get("lora") and any(k.endswith(".lora_a") for k in state):
        return _merged_lora(cfg, state, meta["lora"], str(directory / WEIGHTS)), meta
    return build_model(cfg, state, str(directory / WEIGHTS)), meta


def _merged_lora(
    cfg: ModelConfig, state: dict[str, torch.Tensor], lora: dict[str, Any], source: str
) -> Decoder:
    from gptlab.lora import apply_lora, merge_lora

    with torch.device("meta"):
        model = new_model(cfg)
        apply_lora(model, int(lora["rank"]), float(lora["alpha"]), tuple(lora["targets"]))
    expected = set(model.state_dict()) - ({"out_head.weight"} if model.tied else set())
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise GptlabError(f"{source}: tensor {odd[0]} does not fit the run's LoRA settings")
    model.load_state_dict(state, strict=False, assign=True)
    if model.tied:
        model.out_head.weight = model.tok_emb.weight
    return merge_lora(model).eval()


# ---- training checkpoints ------------------------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Decoder,
    train_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    *,
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write `checkpoints/step-NNNNNN/` completely under a temporary name, rename it into
    place, then point LATEST at it; only then are older checkpoints beyond the newest `keep`
    removed (each holds the optimizer state, twice the weights: they are most of a run
    folder), and any of later steps, left by an attempt that LATEST never named. A
    `tokenizer` is saved with the model, as `save_model` does."""
    if keep < 1:
        raise GptlabError(f"keep at least the latest checkpoint, not {keep}")
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, meta, weights, tokenizer=tokenizer)
    atomic_write(tmp / TRAIN_STATE, lambda p: torch.save(train_state, p))
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "LATEST", final.name + "\n")
    numbers = {p: p.name.removeprefix("step-") for p in root.glob("step-*")}
    steps = {int(n): p for p, n in numbers.items() if n.isdigit()}
    older = sorted((k for k in steps if k < step), reverse=True)
    for stale in older[keep - 1 :] + [k for k in steps if k > step]:
        shutil.rmtree(steps[stale], ignore_errors=True)
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints of a finished run (its final model is elsewhere).
    With none kept, LATEST goes first, so a crash midway never leaves it naming a checkpoint
    half deleted."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return
    if keep > 0:
        for stale in sorted(root.glob("step-*"), reverse=True)[keep:]:
            shutil.rmtree(stale, ignore_errors=True)
        return
    (root / "LATEST").unlink(missing_ok=True)
    fsync_dir(root)
    shutil.rmtree(root, ignore_errors=True)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run has saved any checkpoint (LATEST is written after the first)."""
    return (checkpoint_dir(run_dir) / "LATEST").is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = checkpoint_dir(run_dir) / "LATEST"
    if not pointer.is_file():
        return None
    path = checkpoint_dir(run_dir) / pointer.read_text(encoding="utf-8").strip()
    if not (path / TRAIN_STATE).is_file():
        raise GptlabError(f"{pointer}: names {path.name}, which is missing or incomplete")
    return path


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GptlabError(f"{path}: training state not found") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise GptlabError(
            f"{path}: cannot read training state ({exc.__class__.__name__})"
        ) from None


def iter_model_folders(run_dir: Path) -> Iterator[Path]:
    """Candidate model folders of a run, best first: the final model, then the latest checkpoint."""
    if (run_dir / WEIGHTS).is_file():
        yield run_dir
    if (run_dir / "model" / WEIGHTS).is_file():
        yield run_dir / "model"
    latest = latest_checkpoint(run_dir) if checkpoint_dir(run_dir).is_dir() else None
    if latest is not None:
        yield latest
