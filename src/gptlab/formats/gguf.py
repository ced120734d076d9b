"""GGUF files (llama.cpp's format) of Llama-family models, read into gptlab.llama.

`read_gguf` reads a file with the `gguf` package (llama.cpp's own Python library): the
metadata of the `llama`, `qwen2` or `qwen3` architecture becomes a LlamaConfig (`gemma3`: a
Gemma3Config; its norm weights are stored plus one and read back minus one) and every tensor is
dequantized to float32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K to
Q6_K) under gptlab's parameter names. `load_gguf` builds the model from that (`build_llama`).
The metadata handed back holds the scalar keys and the tokenizer's arrays
(`tokenizer.ggml.tokens`, `.merges`, `.token_type`), from which gptlab.text builds the file's
tokenizer; `read_gguf_metadata` reads only that.

Before anything else, the file's `general.architecture` is read by walking the header's
key/value pairs only up to it (`read_architecture`), so a file of another architecture is
refused at once, whatever the size of its vocabulary.

The header is walked with struct (`_reader`: the key/values, then each tensor's name, shape,
type and offset) and the file memory-mapped; each tensor is a numpy view of the map, shaped as
gguf.GGUFReader shapes it, and is dequantized by gguf from the map once, so a model costs its
float32 size in memory plus the mapped pages, never two copies.

One layout change besides renaming: for the `llama` architecture llama.cpp's converter
(convert_hf_to_gguf.py) reorders the rows of each head of attn_q and attn_k, because ggml's
"normal" rotary mode rotates adjacent pairs (x[2i], x[2i+1]) where Hugging Face (and
gptlab.llama) rotate the two halves (x[i], x[i + head_dim/2]). Within a head the converter
moved row i of the first half to row 2i and row i of the second half to row 2i + 1; reading
undoes that (`unpermute_rotary`). Qwen2 and Qwen3 files use ggml's "neox" mode, the halves
layout, and are stored unpermuted.

Llama 3.1's rotary scaling is stored by llama.cpp as a tensor, `rope_freqs.weight`, one
divisor per frequency, instead of metadata; it is read back into a RopeScaling (the published
low/high frequency factors 1 and 4 on an original context of 8192, checked against every
divisor in the file).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from gptlab.config import Gemma3Config, LlamaConfig, RopeScaling
from gptlab.errors import GptlabError
from gptlab.families import new_model
from gptlab.formats.llama_names import expected_shapes, parameter_names
from gptlab.llama import rope_frequencies
from gptlab.model import Decoder

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
QUANT_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip


class GGUFModel(NamedTuple):
    cfg: LlamaConfig | Gemma3Config
    tensors: dict[str, torch.Tensor]  # gptlab names, float32; a tied head left out
    metadata: dict[str, Any]  # scalar key/values, plus the tokenizer.ggml.* arrays as lists


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's adjacent-pairs row order of a q or k projection (rows: n_heads heads of
    head_dim) back to the halves order: row 2i + s of a head -> row s * head_dim/2 + i."""
    half = w.shape[0] // n_heads // 2
    rest = w.shape[1:]
    return w.reshape(n_heads, half, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `unpermute_rotary`, for writing: the halves order of a q or k projection
    into llama.cpp's adjacent pairs, row s * head_dim/2 + i of a head -> row 2i + s."""
    half = w.shape[0] // n_heads // 2
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, half, *rest).transpose(1, 2).reshape(w.shape)


def _check_magic(path: Path) -> None:
    if not path.is_file():
        raise GptlabError(f"{path}: no such file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GptlabError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")


# GGUF's scalar value types by number (gguf's GGUFValueType: UINT8 .. INT32, FLOAT32, BOOL,
# then UINT64, INT64, FLOAT64; 8 is a string, 9 an array): numpy type, struct code, bytes.
_SCALARS = {
    0: ("u1", "B"), 1: ("i1", "b"), 2: ("u2", "H"), 3: ("i2", "h"), 4: ("u4", "I"),
    5: ("i4", "i"), 6: ("f4", "f"), 7: ("?", "?"), 10: ("u8", "Q"), 11: ("i8", "q"),
    12: ("f8", "d"),
}  # fmt: skip
_SCALAR_BYTES = {kind: np.dtype(t).itemsize for kind, (t, _) in _SCALARS.items()}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


def read_architecture(path: Path) -> str | None:
    """`general.architecture`, read by walking the key/value pairs only up to it (llama.cpp
    writes it first), so a file is judged by its architecture before its vocabulary (262,144
    tokens for Gemma 3) is parsed. None when the header ends or is cut before the key."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            version = struct.unpack_from("<I", m, 4)[0]
            order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads swapped
            if struct.unpack_from(order + "I", m, 4)[0] not in (2, 3):
                return None  # the layout differs: the full reader decides
            n_kv = struct.unpack_from(order + "Q", m, 16)[0]
            pos = 24
            for _ in range(n_kv):
                key, pos = _string(m, pos, order)
                kind = struct.unpack_from(order + "I", m, pos)[0]
                if key == "general.architecture" and kind == _STRING:
                    return _string(m, pos + 4, order)[0]
                pos = _skip_value(m, pos + 4, kind, order)
        except (struct.error, ValueError):  # cut short, or not a value type GGUF has
            return None
    return None


def count_parameters(path: Path) -> int | None:
    """The number of weights the file's tensor infos declare, read from the header alone (the
    key/value pairs skipped, no tensor data touched: a header is enough), so a model's size in
    memory is known before it is loaded. None when the header cannot be walked."""
    _check_magic(path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        try:
            order = "<" if struct.unpack_from("<I", m, 4)[0] & 0xFFFF else ">"
            n_tensors, n_kv = struct.unpack_from(order + "QQ", m, 8)
            pos = 24
            for _ in range(n_kv):
                pos = _string(m, pos, order)[1]
                pos = _skip_value(m, pos + 4, struct.unpack_from(order + "I", m, pos)[0], order)
            infos, _ = _tensor_infos(m, pos, order, n_tensors)
        except (struct.error, ValueError):
            return None
    return sum(int(np.prod(dims, dtype=np.int64)) for _, dims, _, _ in infos)


def _tensor_infos(
    m: mmap.mmap, pos: int, order: str, n_tensors: int
) -> tuple[list[tuple[str, tuple[int, ...], int, int]], int]:
    """(name, dims, type, data offset) of each tensor whose info starts at `pos`, and the
    position after them."""
    infos = []
    for _ in range(n_tensors):
        name, pos = _string(m, pos, order, "strict")
        n_dims = struct.unpack_from(order + "I", m, pos)[0]
        dims = struct.unpack_from(f"{order}{n_dims}QIQ", m, pos + 4)
        infos.append((name, dims[:n_dims], dims[n_dims], dims[n_dims + 1]))
        pos += 4 + 8 * n_dims + 12
    return infos, pos


def _string(m: mmap.mmap, pos: int, order: str, errors: str = "replace") -> tuple[str, int]:
    n = struct.unpack_from(order + "Q", m, pos)[0]
    if pos + 8 + n > len(m):
        raise ValueError("string past the end of the file")
    return m[pos + 8 : pos + 8 + n].decode("utf-8", errors=errors), pos + 8 + n


def _value(m: mmap.mmap, pos: int, kind: int, order: str) -> tuple[Any, int]:
    """The value of type `kind` at `pos` (as gguf's ReaderField.contents gives it: numbers,
    str, or a list of them) and the position after it."""
    if kind == _STRING:
        return _string(m, pos, order, "strict")
    if kind == _ARRAY:
        item, count = struct.unpack_from(order + "IQ", m, pos)
        pos += 12
        if item in _SCALAR_BYTES:
            end = pos + count * _SCALAR_BYTES[item]
            if end > len(m):
                raise ValueError("array past the end of the file")
            dtype = np.dtype(_SCALARS[item][0]).newbyteorder(order)
            return np.frombuffer(m[pos:end], dtype=dtype).tolist(), end
        values = []
        for _ in range(count):
            value, pos = _value(m, pos, item, order)
            values.append(value)
        return values, pos
    if kind not in _SCALAR_BYTES:
        raise ValueError(f"value type {kind}")
    return struct.unpack_from(order + _SCALARS[kind][1], m, pos)[0], pos + _SCALAR_BYTES[kind]


def _skip_value(m: mmap.mmap, pos: int, kind: int, order: str) -> int:
    """The position after a value of type `kind` starting at `pos`."""
    if kind == _STRING:
        return pos + 8 + struct.unpack_from(order + "Q", m, pos)[0]
    if kind == _ARRAY:
        item, count = struct.unpack_from(order + "IQ", m, pos)
        pos += 12
        if item in _SCALAR_BYTES:
            return pos + count * _SCALAR_BYTES[item]
        for _ in range(count):
            pos = _skip_value(m, pos, item, order)
        return pos
    if kind not in _SCALAR_BYTES:
        raise ValueError(f"value type {kind}")
    return pos + _SCALAR_BYTES[kind]


def check_architecture(path: Path, arch: Any) -> None:
    if arch not in ARCHITECTURES:
        raise GptlabError(
            f"{path}: unsupported architecture {arch!r}; gptlab reads {', '.join(ARCHITECTURES)}"
        )


class GGUFTensor(NamedTuple):
    """One tensor of a GGUF file: `data` is a view of the memory-mapped file, typed and shaped
    as gguf.GGUFReader gives it (float types as numbers, quantized types as block bytes, one
    row of blocks per row)."""

    name: str
    shape: tuple[int, ...]  # GGUF's order: innermost dimension first
    tensor_type: Any  # gguf.GGMLQuantizationType
    n_bytes: int
    data: np.ndarray
    offset: int  # of its first byte in the file


class GGUFHeader(NamedTuple):
    metadata: dict[str, Any]  # scalar key/values, and the arrays named by ARRAY_PREFIXES
    tensors: list[GGUFTensor]
    mapped: np.memmap  # the whole file

    def drop(self, tensor: GGUFTensor) -> None:
        """Give the tensor's pages of the mapped file back, once it has been read into other
        memory: they stay in the page cache, a later read maps them again, and a model read
        from the file costs its own size, not that plus the file's (a resident mapped page
        counts towards the process's memory)."""
        mapped = getattr(self.mapped, "_mmap", None)  # numpy's mmap.mmap behind the array
        if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = tensor.offset // mmap.PAGESIZE * mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, start, tensor.offset + tensor.n_bytes - start)


def _reader(path: Path) -> GGUFHeader:
    """The file's metadata and tensors, its header walked with struct (gguf.GGUFReader builds
    numpy views of every field: 9 s for SmolLM2's 49,152-token vocabulary on the 2-core
    machine, where this takes a fraction of a second); the tensors stay in the file."""
    _check_magic(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _header(path, m)
    except (ValueError, KeyError, IndexError, OSError, struct.error) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GptlabError(
            f"{path}: cannot read GGUF ({detail}); the file may be truncated"
        ) from None


def _header(path: Path, m: mmap.mmap) -> GGUFHeader:
    version = struct.unpack_from("<I", m, 4)[0]
    order = "<" if version & 0xFFFF else ">"  # a big-endian file's version reads swapped
    version, n_tensors, n_kv = struct.unpack_from(order + "IQQ", m, 4)
    if version not in (2, 3):
        raise ValueError(f"version {version}, where gguf reads 2 and 3")
    meta: dict[str, Any] = {
        "GGUF.version": version,
        "GGUF.tensor_count": n_tensors,
        "GGUF.kv_count": n_kv,
    }
    pos = 24
    for _ in range(n_kv):
        key, pos = _string(m, pos, order, "strict")
        kind = struct.unpack_from(order + "I", m, pos)[0]
        if kind == _ARRAY and not key.startswith(ARRAY_PREFIXES):
            pos = _skip_value(m, pos + 4, kind, order)  # other arrays are not handed over
            continue
        meta[key], pos = _value(m, pos + 4, kind, order)
        if kind == _FLOAT32:
            meta[key] = float(str(np.float32(meta[key])))  # 9.999999747e-06 -> 1e-05
    infos, pos = _tensor_infos(m, pos, order, n_tensors)
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment {align!r} is not a power of two")
    start = -(-pos // align) * align
    data = np.memmap(path, mode="r")
    return GGUFHeader(meta, [_tensor(data, start, order, *info) for info in infos], data)


def _tensor(
    data: np.memmap, start: int, order: str, name: str, dims: tuple[int, ...], kind: int, at: int
) -> GGUFTensor:
    """One tensor's view of the mapped file, as gguf.GGUFReader shapes it."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType(kind)
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_elems = int(np.prod(dims, dtype=np.int64))
    n_bytes = n_elems * type_size // block
    begin = start + at
    if begin + n_bytes > len(data):
        raise ValueError(f"tensor {name} runs past the end of the file")
    shape = tuple(reversed(dims))
    raw = data[begin : begin + n_bytes]
    if qtype.name in _NUMBERS:
        array = raw.view(np.dtype(_NUMBERS[qtype.name]).newbyteorder(order)).reshape(shape)
    else:
        array = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
    return GGUFTensor(name, dims, qtype, n_bytes, array, begin)


# GGML types gguf.GGUFReader hands over as numbers; the rest as bytes
_NUMBERS = {
    "F16": "f2", "F32": "f4", "F64": "f8", "I8": "i1", "I16": "i2", "I32": "i4", "I64": "i8",
}  # fmt: skip


# Array-valued keys handed over (a tokenizer's vocabulary, merges, token types, scores); other
# arrays are left out.
ARRAY_PREFIXES = ("tokenizer.ggml.",)
# llama.cpp stores Gemma 3's RMSNorm weights as 1 + weight (ggml multiplies by the weight).
GEMMA3_NORM_SHIFT = 1.0


def _config(path: Path, meta: dict[str, Any], names: set[str]) -> LlamaConfig | Gemma3Config:
    arch = meta.get("general.architecture")
    check_architecture(path, arch)

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise GptlabError(f"{path}: metadata {arch}.{key} missing")
        return value

    if "tokenizer.ggml.tokens" in meta:
        vocab_size = len(meta["tokenizer.ggml.tokens"])
    else:
        vocab_size = get("vocab_size")
    if arch == "gemma3":
        return _gemma3_config(path, get, vocab_size, "output.weight" not in names)
    emb_dim, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    scaling_type = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", "llama3"):
        raise GptlabError(f"{path}: unsupported rope scaling {scaling_type!r}")
    try:
        cfg = LlamaConfig(
            vocab_size=vocab_size,
            context_length=int(get("context_length")),
            emb_dim=emb_dim,
            n_layers=int(get("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=int(get("attention.key_length", emb_dim // n_heads)),
            hidden_dim=int(get("feed_forward_length")),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon")),
            tie_weights="output.weight" not in names,
            qk_norm=arch == "qwen3",
            attention_bias=arch != "qwen2" and "blk.0.attn_q.bias" in names,
            qkv_bias=arch == "qwen2",  # attn_q.bias, attn_k.bias, attn_v.bias; no attn_output.bias
        )
    except GptlabError as exc:
        raise GptlabError(f"{path}: {exc}") from None
    rotated = int(meta.get(f"{arch}.rope.dimension_count", cfg.head_dim))
    if rotated != cfg.head_dim:
        raise GptlabError(
            f"{path}: rotary embeddings on {rotated} of {cfg.head_dim} head dimensions "
            "(partial rotary) are not supported"
        )
    return cfg


def _gemma3_config(path: Path, get: Any, vocab_size: int, tied: bool) -> Gemma3Config:
    """Gemma 3's metadata. What llama.cpp does not store it fixes for the architecture, and so
    does this: five sliding layers per global one, a local rotary base of 10000, queries
    scaled by head_dim ** -0.5 (query_pre_attn_scalar = head_dim in every published size)."""
    head_dim = int(get("attention.key_length"))
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise GptlabError(f"{path}: unsupported rope scaling {scaling!r} for gemma3")
    try:
        return Gemma3Config(
            vocab_size=vocab_size,
            context_length=int(get("context_length")),
            emb_dim=int(get("embedding_length")),
            n_layers=int(get("block_count")),
            n_heads=int(get("attention.head_count")),
            n_kv_heads=int(get("attention.head_count_kv")),
            head_dim=head_dim,
            hidden_dim=int(get("feed_forward_length")),
            rope_base=float(get("rope.freq_base", 1000000.0)),
            rope_factor=float(get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
            sliding_window=int(get("attention.sliding_window")),
            query_scale=float(head_dim),
            rms_eps=float(get("attention.layer_norm_rms_epsilon")),
            tie_weights=tied,
        )
    except GptlabError as exc:
        raise GptlabError(f"{path}: {exc}") from None


def _rope_scaling(path: Path, cfg: LlamaConfig, divisors: torch.Tensor) -> RopeScaling | None:
    """The Llama 3 scaling behind llama.cpp's per-frequency divisors (rope_freqs.weight)."""
    if bool((divisors == 1.0).all()):
        return None
    scaling = RopeScaling(
        factor=float(str(np.float32(divisors.max().item()))),
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_context_length=8192,
    )
    want = rope_frequencies(cfg) / rope_frequencies(cfg.replace(rope_scaling=scaling))
    if divisors.shape != want.shape or not torch.allclose(divisors, want, rtol=1e-4):
        raise GptlabError(
            f"{path}: rope_freqs.weight is not Llama 3 scaling with low_freq_factor 1, "
            "high_freq_factor 4 and original context 8192"
        )
    return scaling


def _dequantize(path: Path, t: Any) -> torch.Tensor:
    from gguf import quants

    kind = t.tensor_type.name
    if kind not in QUANT_TYPES:
        raise GptlabError(
            f"{path}: tensor {t.name} has quant type {kind}, which gptlab does not read "
            f"(it reads {', '.join(QUANT_TYPES)})"
        )
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
    if t.data.nbytes != int(t.n_bytes):
        raise GptlabError(f"{path}: tensor {t.name} is cut short; the file is truncated")
    if kind == "F32":
        array = np.array(t.data, dtype=np.float32)  # the one copy, out of the memory map
    else:
        array = quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(array.reshape(shape))


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The file's metadata as read_gguf gives it, without reading any tensor (for a tokenizer:
    gptlab.text.from_gguf_metadata)."""
    return _reader(Path(path)).metadata


def read_gguf(path: str | Path) -> GGUFModel:
    """The config, float32 tensors (gptlab names) and metadata (scalars, and the tokenizer's
    arrays) of a GGUF file."""
    path = Path(path)
    _check_magic(path)
    arch = read_architecture(path)
    if arch is not None:  # else the full reader says what is wrong with the header
        check_architecture(path, arch)
    header = _reader(path)
    meta = header.metadata
    cfg, names, by_name = _layout(path, header)
    shapes = expected_shapes(cfg)
    tensors = {}
    for n in names:
        w = _dequantize(path, by_name[n.gguf])
        header.drop(by_name[n.gguf])
        check_shape(path, n, tuple(w.shape), shapes)
        tensors[n.gptlab] = as_gptlab(meta, cfg, n, w)
    return GGUFModel(cfg, tensors, meta)


def as_gptlab(
    meta: dict[str, Any], cfg: LlamaConfig | Gemma3Config, name: Any, w: torch.Tensor
) -> torch.Tensor:
    """A tensor of the file as gptlab holds it: llama's q and k rows back in the halves order,
    Gemma 3's norm weights less the one llama.cpp added."""
    heads = rotary_heads(meta, cfg, name.gptlab)
    if heads is not None:
        return unpermute_rotary(w, heads)
    if isinstance(cfg, Gemma3Config) and name.gguf.endswith("norm.weight"):
        return w - GEMMA3_NORM_SHIFT
    return w


def _layout(
    path: Path, header: GGUFHeader
) -> tuple[LlamaConfig | Gemma3Config, list[Any], dict[str, GGUFTensor]]:
    """The config (Llama 3 scaling read from rope_freqs), the parameter names and the file's
    tensors by name, every expected one present and none unexpected."""
    by_name = {t.name: t for t in header.tensors}
    if len(by_name) < len(header.tensors):
        raise GptlabError(f"{path}: a tensor name appears twice")
    meta = header.metadata
    cfg = _config(path, meta, set(by_name))
    if "rope_freqs.weight" in by_name:
        divisors = _dequantize(path, by_name.pop("rope_freqs.weight"))
        cfg = cfg.replace(rope_scaling=_rope_scaling(path, cfg, divisors))
    names = parameter_names(cfg)
    ours = {n.gguf: n.gptlab for n in names}
    unexpected = sorted(set(by_name) - set(ours))
    if unexpected:
        arch = meta["general.architecture"]
        raise GptlabError(f"{path}: unexpected tensor {unexpected[0]} for a {arch} model")
    missing = [n.gguf for n in names if n.gguf not in by_name]
    if missing:
        raise GptlabError(f"{path}: tensor {missing[0]} missing ({len(missing)} missing in all)")
    return cfg, names, by_name


def check_shape(
    path: Path, name: Any, shape: tuple[int, ...], shapes: dict[str, tuple[int, ...]]
) -> None:
    """One GptlabError line where a tensor's shape is not the one the metadata implies
    (`shapes`: gptlab.formats.llama_names.expected_shapes)."""
    want = shapes[name.gptlab]
    if shape != want:
        raise GptlabError(
            f"{path}: tensor {name.gguf} has shape {shape}, the metadata implies {want}"
        )


def rotary_heads(meta: dict[str, Any], cfg: LlamaConfig | Gemma3Config, name: str) -> int | None:
    """The number of heads whose rows llama.cpp reordered in parameter `name` (q and k of the
    `llama` architecture), None where the rows are stored as they are."""
    if meta["general.architecture"] != "llama":
        return None
    if name.endswith(("attn.q.weight", "attn.q.bias")):
        return cfg.n_heads
    if name.endswith(("attn.k.weight", "attn.k.bias")):
        return cfg.n_kv_heads
    return None


def load_gguf(path: str | Path) -> Decoder:
    """A gptlab.llama (or gptlab.gemma3) model holding the file's weights (float32, eval mode)."""
    cfg, tensors, _ = read_gguf(path)
    return build_llama(cfg, tensors)


def build_llama(cfg: LlamaConfig | Gemma3Config, tensors: dict[str, torch.Tensor]) -> Decoder:
    """A model holding exactly `tensors` (as read_gguf returns them, shapes checked there),
    built without allocating a random copy first."""
    with torch.device("meta"):
        model = new_model(cfg)
    model.load_state_dict(tensors, strict=False, assign=True)
    if model.tied:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()
