"""Llama-family parameters (gptlab.llama) in the three spellings gptlab reads.

gptlab's (`blocks.0.attn.q.weight`), Hugging Face's LlamaForCausalLM / Qwen3ForCausalLM
(`model.layers.0.self_attn.q_proj.weight`) and GGUF's, llama.cpp's (`blk.0.attn_q.weight`).
All three store nn.Linear matrices as [out, in], so a mapping is a rename. One exception, not
a rename: llama.cpp stores the q and k rows of the `llama` architecture in its own rotary
layout; gptlab.formats.gguf undoes that.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gptlab.config import LlamaConfig
from gptlab.llama import Llama


class Name(NamedTuple):
    gptlab: str
    hf: str
    gguf: str


def parameter_names(cfg: LlamaConfig) -> list[Name]:
    """Every parameter of a language model built from `cfg`; the head only where it is not
    tied (a tied head is tok_emb.weight)."""
    names = [Name("tok_emb.weight", "model.embed_tokens.weight", "token_embd.weight")]
    suffixes = ["weight", "bias"] if cfg.attention_bias else ["weight"]
    for i in range(cfg.n_layers):
        g, h, q = f"blocks.{i}.", f"model.layers.{i}.", f"blk.{i}."
        names.append(Name(f"{g}norm1.weight", f"{h}input_layernorm.weight", f"{q}attn_norm.weight"))
        for ours, theirs, gguf in (
            ("q", "q_proj", "attn_q"),
            ("k", "k_proj", "attn_k"),
            ("v", "v_proj", "attn_v"),
            ("o", "o_proj", "attn_output"),
        ):
            for s in suffixes:
                names.append(
                    Name(f"{g}attn.{ours}.{s}", f"{h}self_attn.{theirs}.{s}", f"{q}{gguf}.{s}")
                )
        if cfg.qk_norm:
            for ours, theirs, gguf in (
                ("q_norm", "q_norm", "attn_q_norm"),
                ("k_norm", "k_norm", "attn_k_norm"),
            ):
                names.append(
                    Name(
                        f"{g}attn.{ours}.weight",
                        f"{h}self_attn.{theirs}.weight",
                        f"{q}{gguf}.weight",
                    )
                )
        names.append(
            Name(f"{g}norm2.weight", f"{h}post_attention_layernorm.weight", f"{q}ffn_norm.weight")
        )
        for ours, theirs, gguf in (
            ("gate", "gate_proj", "ffn_gate"),
            ("up", "up_proj", "ffn_up"),
            ("down", "down_proj", "ffn_down"),
        ):
            names.append(
                Name(f"{g}ff.{ours}.weight", f"{h}mlp.{theirs}.weight", f"{q}{gguf}.weight")
            )
    names.append(Name("final_norm.weight", "model.norm.weight", "output_norm.weight"))
    # A classifier's head (n_classes) is gptlab's own and has no counterpart here.
    if cfg.n_classes is None and not cfg.tie_weights:
        names.append(Name("out_head.weight", "lm_head.weight", "output.weight"))
    return names


def to_hf(state: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """A gptlab state dict under Hugging Face's names (the tied head left out, as HF saves it)."""
    return {n.hf: state[n.gptlab] for n in parameter_names(cfg)}


def from_hf(state: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama / Qwen3 state dict under gptlab's names; a tied head is not needed
    (it is tok_emb.weight). Raises KeyError naming the first missing tensor."""
    return {n.gptlab: state[n.hf] for n in parameter_names(cfg)}


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """gptlab parameter shapes for `cfg`, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Llama(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
