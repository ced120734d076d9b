"""GPT-2's parameters in the three spellings that gptlab reads and writes.

OpenAI's TensorFlow variables (`model/h0/attn/c_attn/w`, Conv1D weights stored [1, in, out]),
Hugging Face's GPT-2 safetensors (`h.0.attn.c_attn.weight`, Conv1D weights [in, out], with or
without a `transformer.` prefix) and gptlab's (`blocks.0.attn.qkv.weight`, nn.Linear [out, in]).
The fused q|k|v projection has the same layout in all three, so a mapping is a rename plus,
for the four Conv1D matrices of each block, a transpose.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gptlab.config import GPTConfig
from gptlab.model import GPT


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
