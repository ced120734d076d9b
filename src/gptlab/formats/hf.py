"""Hugging Face's GPT-2 (`model.safetensors`, optionally with its `config.json`), both ways.

Loading never holds two copies: the file is memory-mapped, and its Conv1D weights enter the
model as transposed views of the mapped file rather than as copies (see `load_hf_safetensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from gptlab.checkpoints import CONFIG, WEIGHTS, build_model, read_safetensors
from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.formats.hf_llama import export_hf_llama
from gptlab.formats.names import parameter_names
from gptlab.gemma3 import Gemma3
from gptlab.io import atomic_write, atomic_write_json, read_json, read_json_object
from gptlab.llama import Llama
from gptlab.model import GPT, Decoder
from gptlab.tokenizer import EOT_ID

# GPT-2's head counts by width: HF weight files alone do not say how many heads there are.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
HF_IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some old files carry


def is_hf_folder(folder: Path) -> bool:
    """A folder whose config.json is Hugging Face's (model_type gpt2), not gptlab's: the two
    formats share both file names, so only the config tells them apart."""
    config = folder / CONFIG
    return config.is_file() and read_json_object(config, "model config").get("model_type") == "gpt2"


def hf_config(path: Path, tensors: dict[str, torch.Tensor]) -> GPTConfig:
    """The config of an HF GPT-2 file: from config.json beside it if there is one, else from the
    tensor shapes and GPT-2's head count for that width."""
    config_path = path.parent / CONFIG
    if config_path.is_file():
        hf = read_json(config_path, "model config")
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
    weights become transposed views of the file, never copies (training makes its weights
    contiguous; decoding reads either order)."""
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


def export_hf(model: Decoder, directory: str | Path) -> Path:
    """Write `model` as Hugging Face GPT-2 (config.json + model.safetensors), loadable by
    `transformers.GPT2LMHeadModel.from_pretrained(directory)` with the same logits; a
    Llama-family model as Hugging Face Llama / Qwen2 / Qwen3, a Gemma 3 one as Gemma 3
    (gptlab.formats.hf_llama)."""
    if isinstance(model, (Llama, Gemma3)):
        return export_hf_llama(model, directory)
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
