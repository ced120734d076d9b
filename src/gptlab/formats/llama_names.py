"""Llama-family and Gemma 3 parameters (gptlab.llama, gptlab.gemma3) in the three spellings
gptlab reads.

gptlab's (`blocks.0.attn.q.weight`), Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM /
Qwen3ForCausalLM / Gemma3ForCausalLM (`model.layers.0.self_attn.q_proj.weight`) and GGUF's,
llama.cpp's (`blk.0.attn_q.weight`). All three store nn.Linear matrices as [out, in], so a
mapping is a rename. Two exceptions, not renames: llama.cpp stores the q and k rows of the
`llama` architecture in its own rotary layout, and Gemma 3's norm weights plus one;
gptlab.formats.gguf undoes both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gptlab.config import Gemma3Config, LlamaConfig
from gptlab.families import new_model


class Name(NamedTuple):
    gptlab: str
    hf: str
    gguf: str


# Each family's block norms: gptlab's name, Hugging Face's, llama.cpp's.
LLAMA_NORMS = (
    ("norm1", "input_layernorm", "attn_norm"),
    ("norm2", "post_attention_layernorm", "ffn_norm"),
)
GEMMA3_NORMS = (
    ("norm1", "input_layernorm", "attn_norm"),
    ("post_attn_norm", "post_attention_layernorm", "post_attention_norm"),
    ("norm2", "pre_feedforward_layernorm", "ffn_norm"),
    ("post_ff_norm", "post_feedforward_layernorm", "post_ffw_norm"),
)
ATTENTION = (("q", "q_proj", "attn_q"), ("k", "k_proj", "attn_k"), ("v", "v_proj", "attn_v"))
QK_NORMS = (("q_norm", "q_norm", "attn_q_norm"), ("k_norm", "k_norm", "attn_k_norm"))
FEED_FORWARD = (("gate", "gate_proj", "ffn_gate"), ("up", "up_proj", "ffn_up"))


def _block(cfg: LlamaConfig | Gemma3Config, i: int) -> list[Name]:
    g, h, q = f"blocks.{i}.", f"model.layers.{i}.", f"blk.{i}."
    biased = {"q", "k", "v", "o"} if cfg.attention_bias else set()
    if cfg.qkv_bias:  # Qwen2
        biased |= {"q", "k", "v"}
    norms = GEMMA3_NORMS if isinstance(cfg, Gemma3Config) else LLAMA_NORMS
    names = [Name(f"{g}{a}.weight", f"{h}{b}.weight", f"{q}{c}.weight") for a, b, c in norms]
    for ours, theirs, gguf in (*ATTENTION, ("o", "o_proj", "attn_output")):
        for s in ("weight", "bias") if ours in biased else ("weight",):
            names.append(
                Name(f"{g}attn.{ours}.{s}", f"{h}self_attn.{theirs}.{s}", f"{q}{gguf}.{s}")
            )
    for ours, theirs, gguf in QK_NORMS if cfg.qk_norm else ():
        names.append(
            Name(f"{g}attn.{ours}.weight", f"{h}self_attn.{theirs}.weight", f"{q}{gguf}.weight")
        )
    for ours, theirs, gguf in (*FEED_FORWARD, ("down", "down_proj", "ffn_down")):
        names.append(Name(f"{g}ff.{ours}.weight", f"{h}mlp.{theirs}.weight", f"{q}{gguf}.weight"))
    return names


def parameter_names(cfg: LlamaConfig | Gemma3Config) -> list[Name]:
    """Every parameter of a language model built from `cfg`; the head only where it is not
    tied (a tied head is tok_emb.weight)."""
    names = [Name("tok_emb.weight", "model.embed_tokens.weight", "token_embd.weight")]
    for i in range(cfg.n_layers):
        names += _block(cfg, i)
    names.append(Name("final_norm.weight", "model.norm.weight", "output_norm.weight"))
    # A classifier's head (n_classes) is gptlab's own and has no counterpart here.
    if cfg.n_classes is None and not cfg.tie_weights:
        names.append(Name("out_head.weight", "lm_head.weight", "output.weight"))
    return names


def to_hf(
    state: dict[str, torch.Tensor], cfg: LlamaConfig | Gemma3Config
) -> dict[str, torch.Tensor]:
    """A gptlab state dict under Hugging Face's names (the tied head left out, as HF saves it)."""
    return {n.hf: state[n.gptlab] for n in parameter_names(cfg)}


def from_hf(
    state: dict[str, torch.Tensor], cfg: LlamaConfig | Gemma3Config
) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama / Qwen3 state dict under gptlab's names; a tied head is not needed
    (it is tok_emb.weight). Raises KeyError naming the first missing tensor."""
    return {n.gptlab: state[n.hf] for n in parameter_names(cfg)}


def expected_shapes(cfg: LlamaConfig | Gemma3Config) -> dict[str, tuple[int, ...]]:
    """gptlab parameter shapes for `cfg`, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = new_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
