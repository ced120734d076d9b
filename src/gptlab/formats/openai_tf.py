"""OpenAI's GPT-2 TensorFlow checkpoints (hparams.json + model.ckpt.*) as gptlab models.

The low-level reader is gptlab.formats.tf_checkpoint; this module maps its variables onto
gptlab's parameters (gptlab.formats.names) and checks every shape before reading any tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptlab.checkpoints import build_model
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.formats.names import expected_shapes, parameter_names
from gptlab.formats.tf_checkpoint import TFCheckpoint
from gptlab.io import read_json_object
from gptlab.model import GPT

HPARAMS = "hparams.json"


def config_from_hparams(path: Path) -> GPTConfig:
    hp = read_json_object(path, HPARAMS)
    try:
        return GPTConfig(
            vocab_size=hp["n_vocab"],
            context_length=hp["n_ctx"],
            emb_dim=hp["n_embd"],
            n_layers=hp["n_layer"],
            n_heads=hp["n_head"],
        )
    except (KeyError, TypeError) as exc:
        raise GptlabError(f"{path}: missing or bad field {exc}") from None
    except GptlabError as exc:  # e.g. n_embd not divisible by n_head
        raise GptlabError(f"{path}: {exc}") from None


def tf_prefix(source: Path) -> Path:
    """The checkpoint prefix in a folder of OpenAI's files (or the prefix itself)."""
    if source.is_dir():
        return source / "model.ckpt"
    return Path(str(source).removesuffix(".index"))


def is_tf_checkpoint(path: Path) -> bool:
    """A checkpoint folder or prefix whose index exists."""
    return Path(str(tf_prefix(path)) + ".index").is_file()


def has_tf_files(folder: Path) -> bool:
    """Whether `folder` holds any of a TF checkpoint's own files, so that a missing index
    can be reported as such rather than as "no model here"."""
    return (folder / HPARAMS).is_file() or any(folder.glob("model.ckpt.*"))


def load_tf_checkpoint(source: str | Path) -> GPT:
    """A gptlab GPT from OpenAI's TensorFlow checkpoint (a folder, or the checkpoint prefix with
    hparams.json beside it). Every shape is checked before any tensor is read, and every tensor's
    CRC32C as it is read; nothing is returned unless all of it is right."""
    prefix = tf_prefix(Path(source))
    hparams = prefix.parent / HPARAMS
    with TFCheckpoint(prefix) as ckpt:  # opened first: a missing index is the first thing to say
        cfg = config_from_hparams(hparams)
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
    return build_model(cfg, state, str(ckpt.index_path))
