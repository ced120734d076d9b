"""Writing GGUF files (llama.cpp's format) from gptlab language models, with the `gguf` package.

`write_gguf` stores a model, its tokenizer and its chat template in one file that llama.cpp
(and Ollama, and transformers' GGUF loader) runs with nothing beside it:

- GPT-2 as llama.cpp's `gpt2` architecture: token_embd, position_embd, and per block
  attn_norm, attn_qkv (q|k|v fused, in gptlab's nn.Linear [out, in] layout, which is the layout
  llama.cpp's converter produces from Hugging Face's transposed Conv1D), attn_output, ffn_norm,
  ffn_up, ffn_down, then output_norm. llama.cpp's gpt2 needs a qkv bias, so a model without one
  (qkv_bias False) gets a zero bias, which computes the same thing.
- Llama 3.x / SmolLM2 as `llama`, Qwen2 (qkv_bias) as `qwen2`, Qwen3 (qk_norm) as `qwen3`,
  under the names of gptlab.formats.llama_names. For `llama` the q and k rows are put into
  llama.cpp's rotary order (`permute_rotary`, the inverse of what gptlab.formats.gguf undoes on
  reading); Qwen2 and Qwen3 use the halves order as stored. Llama 3.1 scaling becomes the
  `rope_freqs.weight` divisors, as llama.cpp's converter writes it.
- A tied head is left out (llama.cpp and transformers then use token_embd); an untied one is
  `output.weight`.

Tensor types (`dtype`): f32, f16, bf16 or q8_0 for the matrices; vectors (norms, biases),
GPT-2's position embeddings and rope_freqs stay float32, as llama.cpp's converter keeps them;
a q8_0 matrix whose rows are not a multiple of 32 falls back to f16, as the converter does.

The tokenizer goes in as llama.cpp's "gpt2" (byte-level BPE) model: every token (ids in order,
padded with [PADn] tokens up to the model's vocabulary), its type (control for special tokens,
user-defined for other added ones), the merges, the pre-tokenizer name, the bos/eos/unknown/pad
ids and add_bos_token. GPT-2's vocabulary and merges are rebuilt from tiktoken's ranks (each
merge is the last step of BPE over the token's own bytes with lower ranks only, which gives
back GPT-2's 50,000 merges). The pre-tokenizer's name is the source file's when the tokenizer
came from a GGUF file, else the one llama.cpp gives the tokenizer's split rule.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.config import Gemma3Config, LlamaConfig
from gptlab.errors import GptlabError
from gptlab.formats.gguf import GEMMA3_NORM_SHIFT, permute_rotary
from gptlab.formats.llama_names import parameter_names
from gptlab.io import atomic_write
from gptlab.llama import Llama, rope_frequencies
from gptlab.model import GPT, Decoder
from gptlab.text import CONTROL, USER_DEFINED, GPT2Tokenizer, HFTokenizer, Tokenizer

DTYPES = ("f32", "f16", "bf16", "q8_0")
NORMAL, UNUSED = 1, 5  # llama.cpp's token types besides CONTROL and USER_DEFINED
# gptlab.text's pre-tokenizer kinds, by the name llama.cpp gives each (tokenizer.ggml.pre;
# GPT-2's is "gpt-2": llama.cpp refuses "gpt2").
PRE_NAMES = {"gpt2": "gpt-2", "digits+gpt2": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2"}
# Source keys carried over from a GGUF file: its description, not how it was encoded.
CARRIED = ("general.", "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_eos_token")
NOT_CARRIED = ("general.architecture", "general.file_type", "general.quantization_version")

# GPT-2's parameters, gptlab's name -> llama.cpp's (per block, then the rest).
GPT2_BLOCK = {
    "norm1": "attn_norm",
    "attn.qkv": "attn_qkv",
    "attn.proj": "attn_output",
    "norm2": "ffn_norm",
    "ff.fc": "ffn_up",
    "ff.proj": "ffn_down",
}
GPT2_OUTER = {
    "tok_emb.weight": "token_embd.weight",
    "pos_emb.weight": "position_embd.weight",
    "final_norm.weight": "output_norm.weight",
    "final_norm.bias": "output_norm.bias",
    "out_head.weight": "output.weight",
}


def architecture(model: Decoder) -> str:
    """llama.cpp's architecture name for `model`: gpt2, llama, qwen2, qwen3 or gemma3."""
    if isinstance(model.cfg, Gemma3Config):
        return "gemma3"
    if isinstance(model, Llama):
        if model.cfg.qk_norm:
            return "qwen3"
        return "qwen2" if model.cfg.qkv_bias else "llama"
    return "gpt2"


def _check_exportable(model: Decoder) -> None:
    cfg = model.cfg
    if cfg.n_classes is not None:
        raise GptlabError(
            "a classifier does not export to GGUF: llama.cpp has no classification head "
            "(export the language model it was fine-tuned from)"
        )
    if isinstance(cfg, LlamaConfig) and cfg.qk_norm and (cfg.attention_bias or cfg.qkv_bias):
        raise GptlabError("llama.cpp's qwen3 has no attention biases; this model does not export")
    if isinstance(cfg, LlamaConfig) and cfg.qkv_bias and cfg.attention_bias:
        raise GptlabError(
            "llama.cpp's qwen2 has no output projection bias; this model does not export"
        )


def _gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {}
    for name, gguf_name in GPT2_OUTER.items():
        if name in state and not (name == "out_head.weight" and model.tied):
            out[gguf_name] = state[name]
    for i in range(model.cfg.n_layers):
        for ours, theirs in GPT2_BLOCK.items():
            for kind in ("weight", "bias"):
                key = f"blocks.{i}.{ours}.{kind}"
                if key in state:
                    out[f"blk.{i}.{theirs}.{kind}"] = state[key]
                elif kind == "bias":  # qkv_bias False: llama.cpp's gpt2 needs one, zeros
                    rows = state[f"blocks.{i}.{ours}.weight"].shape[0]
                    out[f"blk.{i}.{theirs}.{kind}"] = torch.zeros(rows)
    return out


def _llama_tensors(model: Decoder) -> dict[str, torch.Tensor]:
    cfg, state = model.cfg, model.state_dict()
    permuted = architecture(model) == "llama"
    out = {}
    for n in parameter_names(cfg):
        w = state[n.gptlab]
        if permuted and n.gptlab.endswith(("attn.q.weight", "attn.q.bias")):
            w = permute_rotary(w, cfg.n_heads)
        elif permuted and n.gptlab.endswith(("attn.k.weight", "attn.k.bias")):
            w = permute_rotary(w, cfg.n_kv_heads)
        elif isinstance(cfg, Gemma3Config) and n.gguf.endswith("norm.weight"):
            w = w + GEMMA3_NORM_SHIFT
        out[n.gguf] = w
    if getattr(cfg, "rope_scaling", None) is not None:  # Llama 3.1: one divisor per frequency
        plain = rope_frequencies(cfg.replace(rope_scaling=None))
        out["rope_freqs.weight"] = plain / rope_frequencies(cfg)
    return out


def _encode(name: str, w: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(array for the writer, its GGML type) for one tensor; see the module docstring."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if w.ndim == 1 or dtype == "f32" or name in ("position_embd.weight", "rope_freqs.weight"):
        return w, Q.F32
    if dtype == "q8_0" and w.shape[-1] % 32 == 0:
        return quants.quantize(w, Q.Q8_0), Q.Q8_0
    if dtype == "bf16":
        return quants.quantize(w, Q.BF16), Q.BF16
    return w.astype(np.float16), Q.F16


def _file_type(dtype: str) -> int:
    from gguf import LlamaFileType as T

    return {"f32": T.ALL_F32, "f16": T.MOSTLY_F16, "bf16": T.MOSTLY_BF16, "q8_0": T.MOSTLY_Q8_0}[
        dtype
    ]


# ---- the tokenizer --------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value (the byte-level alphabet of its vocab)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _bpe_parts(ranks: Mapping[bytes, int], token: bytes, below: int) -> list[bytes]:
    """`token`'s bytes merged by GPT-2's BPE using only merges ranked below `below`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        best = min(((r, i) for r, i in pairs if r is not None and r < below), default=None)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def gpt2_vocabulary() -> tuple[list[str], list[str]]:
    """GPT-2's 50,257 tokens (byte-level symbols, <|endoftext|> last) and its 50,000 merges,
    rebuilt from tiktoken's ranks."""
    from gptlab.tokenizer import EOT_ID, EOT_TOKEN, mergeable_ranks

    ranks = mergeable_ranks()
    symbols = _byte_symbols()
    spell = lambda b: "".join(symbols[x] for x in b)  # noqa: E731
    tokens = [""] * (len(ranks) + 1)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        tokens[rank] = spell(token)
        if len(token) > 1:
            left, right = _bpe_parts(ranks, token, rank)
            merges.append(f"{spell(left)} {spell(right)}")
    tokens[EOT_ID] = EOT_TOKEN
    return tokens, merges


def _pre_name(backend: Any) -> str:
    """llama.cpp's name for the split rule of a `tokenizers` tokenizer (tokenizer.ggml.pre)."""
    from gptlab.text import LLAMA3_SPLIT, QWEN2_SPLIT

    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return PRE_NAMES["gpt2"]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return PRE_NAMES["digits+gpt2"]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        for kind, split in (("llama3", LLAMA3_SPLIT), ("qwen2", QWEN2_SPLIT)):
            if pattern == split:
                return PRE_NAMES[kind]
    raise GptlabError(
        "the tokenizer's pre-tokenizer is not one llama.cpp names (GPT-2's, SmolLM2's, "
        "Llama 3's or Qwen2's split); it cannot go into a GGUF file"
    )


def _hf_vocabulary(tokenizer: HFTokenizer) -> tuple[list[str], list[int], list[str]]:
    backend = tokenizer.backend
    data = json.loads(backend.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise GptlabError("only byte-level BPE tokenizers go into GGUF files (llama.cpp's 'gpt2')")
    vocab = backend.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise GptlabError("the tokenizer's ids are not contiguous from 0")
    tokens = [by_id[i] for i in range(len(by_id))]
    added = {t.content: t.special for t in backend.get_added_tokens_decoder().values()}
    types = [(CONTROL if added[t] else USER_DEFINED) if t in added else NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def tokenizer_fields(
    tokenizer: Tokenizer, vocab_size: int, source: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The tokenizer.ggml.* keys of `tokenizer` for a model of `vocab_size` ids (the chat
    template apart). `source`: the metadata of the GGUF file the tokenizer came from, whose
    pre-tokenizer name is kept."""
    if source and source.get("tokenizer.ggml.model") == "llama":
        # a SentencePiece vocabulary (Gemma's) read from a GGUF file goes back as it came
        return {k: v for k, v in source.items() if k.startswith("tokenizer.ggml.")}
    if isinstance(tokenizer, GPT2Tokenizer):
        tokens, merges = gpt2_vocabulary()
        types = [NORMAL] * len(tokens)
        types[tokenizer.eos_id] = CONTROL
        pre = PRE_NAMES["gpt2"]
    elif isinstance(tokenizer, HFTokenizer):
        tokens, types, merges = _hf_vocabulary(tokenizer)
        pre = _pre_name(tokenizer.backend)
        if source and source.get("tokenizer.ggml.pre"):
            pre = source["tokenizer.ggml.pre"]
    else:
        raise GptlabError(f"{type(tokenizer).__name__}: not a tokenizer gptlab writes to GGUF")
    if len(tokens) > vocab_size:
        raise GptlabError(
            f"the tokenizer has {len(tokens)} tokens, more than the model's {vocab_size} ids"
        )
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
    fields: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    ids = {t: i for i, t in enumerate(tokens)}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown")):
        text = tokenizer.special_tokens.get(name)
        if text is not None and text in ids:
            fields[f"tokenizer.ggml.{key}_token_id"] = ids[text]
    fields["tokenizer.ggml.eos_token_id"] = tokenizer.eos_id
    fields["tokenizer.ggml.padding_token_id"] = tokenizer.pad_id
    fields["tokenizer.ggml.add_bos_token"] = bool(tokenizer.add_bos)
    return fields


# ---- the file -------------------------------------------------------------------------------


def _arch_fields(model: Decoder) -> dict[str, Any]:
    cfg, arch = model.cfg, architecture(model)
    fields: dict[str, Any] = {
        "context_length": cfg.context_length,
        "embedding_length": cfg.emb_dim,
        "block_count": cfg.n_layers,
        "attention.head_count": cfg.n_heads,
        "vocab_size": cfg.vocab_size,
    }
    if isinstance(cfg, (LlamaConfig, Gemma3Config)):
        fields |= {
            "feed_forward_length": cfg.hidden_dim,
            "attention.head_count_kv": cfg.n_kv_heads,
            "attention.key_length": cfg.head_dim,
            "attention.value_length": cfg.head_dim,
            "rope.dimension_count": cfg.head_dim,
            "rope.freq_base": float(cfg.rope_base),
            "attention.layer_norm_rms_epsilon": float(cfg.rms_eps),
        }
    else:
        fields |= {"feed_forward_length": 4 * cfg.emb_dim, "attention.layer_norm_epsilon": 1e-5}
    if isinstance(cfg, Gemma3Config):  # llama.cpp fixes the rest (pattern 6, local base 1e4)
        if (cfg.sliding_pattern, cfg.rope_local_base, cfg.query_scale) != (6, 1e4, cfg.head_dim):
            raise GptlabError(
                "llama.cpp's gemma3 fixes one global layer in 6, a local rope base of 10000 and "
                "query_pre_attn_scalar = head_dim; this model differs and does not export"
            )
        fields["attention.sliding_window"] = cfg.sliding_window
        if cfg.rope_factor != 1.0:
            fields |= {"rope.scaling.type": "linear", "rope.scaling.factor": cfg.rope_factor}
    return {f"{arch}.{k}": v for k, v in fields.items()}


def _add_field(writer: Any, key: str, value: Any) -> None:
    from gguf import GGUFValueType as V

    if isinstance(value, list):
        sub = V.STRING if value and isinstance(value[0], str) else V.INT32
        if value and isinstance(value[0], float):  # a SentencePiece vocabulary's scores
            sub = V.FLOAT32
        writer.add_key_value(key, value, V.ARRAY, sub_type=sub)
    elif isinstance(value, bool):
        writer.add_key_value(key, value, V.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, V.UINT32)
    elif isinstance(value, float):
        writer.add_key_value(key, value, V.FLOAT32)
    else:
        writer.add_key_value(key, str(value), V.STRING)


def write_gguf(
    model: Decoder,
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    dtype: str = "f32",
    chat_template: str | None = None,
    name: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` with `tokenizer` and `chat_template` (None: none) as one GGUF file (see
    the module docstring), atomically. `name` becomes general.name; `source` is the metadata of
    the GGUF file the model was read from, whose general.* keys and pre-tokenizer are kept."""
    import gguf

    if dtype not in DTYPES:
        raise GptlabError(f"GGUF dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    _check_exportable(model)
    path = Path(path)
    arch = architecture(model)
    fields: dict[str, Any] = {"general.type": "model"}
    fields |= {
        k: v
        for k, v in (source or {}).items()
        if k.startswith(CARRIED) and k not in NOT_CARRIED and not isinstance(v, list)
    }
    if name is not None or "general.name" not in fields:
        fields["general.name"] = name or path.stem
    fields |= _arch_fields(model)
    fields["general.file_type"] = int(_file_type(dtype))
    fields |= tokenizer_fields(tokenizer, model.cfg.vocab_size, source)
    if chat_template is not None:
        fields["tokenizer.chat_template"] = chat_template
    raw = _gpt2_tensors(model) if isinstance(model, GPT) else _llama_tensors(model)
    tensors = {
        k: _encode(k, v.detach().to("cpu", torch.float32).contiguous().numpy(), dtype)
        for k, v in raw.items()
    }

    def write(tmp: Path) -> None:
        logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its progress lines
        writer = gguf.GGUFWriter(str(tmp), arch)
        for key, value in fields.items():
            _add_field(writer, key, value)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, (array, qtype) in tensors.items():
            quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
            writer.add_tensor(key, array, raw_dtype=qtype if quantized else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise GptlabError(f"{path}: cannot write ({exc})") from None
    return path
