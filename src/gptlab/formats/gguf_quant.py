"""A GGUF file's quantized tensors used as they are: its 4- and 8-bit blocks on torch's int4
kernel (gptlab.quantize.Int4Linear), read with numpy from the memory-mapped file, never
widened to a float32 weight.

Each block of 32 weights maps to one int4 group, w = (q - 8) s + z, the file's own codes q:

    type   the file's weights                 s          z
    Q4_0   d (q - 8)                          d          0
    Q4_1   d q + m                            d          m + 8 d
    Q4_K   d sc_j q - dmin m_j (sub-block j)  d sc_j     8 d sc_j - dmin m_j
    Q8_0   d q, q int8, as two int4 halves:   16 d, d    0, 8 d
           q + 128 = 16 hi + lo, so d q = 16 d (hi - 8) + d (lo - 8) + 8 d: one product of
           [x, x] with the hi codes then the lo codes (twice the inputs: 8 bits a weight)

The mapping is exact but for one rounding: torch's CPU int4 kernel is fast only with
bfloat16 scales (gptlab.quantize), so s and z are rounded to bfloat16 (8 significant bits
where the file's float16 has 11): a weight moves by at most 2^-8 (8 |s| + |z|) from the
file's value (tests/test_gguf_quant.py checks every mapped tensor against gguf's own
dequantization within that). Q4_K's scales (float16 times a 6-bit integer) are rounded the
same way.

Every other type of a linear layer's weight (F32, F16, BF16, Q5_*, Q6_K, Q2_K, Q3_K, Q5_K) has
no 4-bit form: it is dequantized by gguf and quantized with the mode asked for, and the load
says how many tensors of which types were. The token embedding is looked up in the file
itself, each row dequantized by gguf as it is read: exact, and it costs no memory but the
mapped pages of the rows used. Norms stay float32. So a Q4_1 file runs in about its own size.

CPU only: the embedding reads the memory map, and the packing is the CPU kernel's. On a GPU,
read the file to float (gptlab.formats.gguf.load_gguf), move it, and quantize there.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gptlab.families import new_model
from gptlab.formats import gguf as gguf_file
from gptlab.formats.llama_names import expected_shapes
from gptlab.model import Decoder
from gptlab.quantize import (
    COMPUTE,
    PACK_ROWS,
    Int4Linear,
    RescoredHead,
    check_mode,
    quantize_weight,
)

log = logging.getLogger("gptlab")

Codes = tuple[np.ndarray, np.ndarray, np.ndarray]  # q uint8 (rows, K'), s, z (rows, K' / 32)


def _half(b: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block (..., bytes) as float32 (...)."""
    return np.ascontiguousarray(b[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 codes, as ggml stores them: low nibbles first, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def q4_0(raw: np.ndarray) -> Codes:
    b = raw.reshape(raw.shape[0], -1, 18)  # d, 16 bytes of codes
    d = _half(b, 0)
    return _nibbles(b[..., 2:]).reshape(raw.shape[0], -1), d, np.zeros_like(d)


def q4_1(raw: np.ndarray) -> Codes:
    b = raw.reshape(raw.shape[0], -1, 20)  # d, m, 16 bytes of codes
    d, m = _half(b, 0), _half(b, 2)
    return _nibbles(b[..., 4:]).reshape(raw.shape[0], -1), d, m + 8 * d


def q4_k(raw: np.ndarray) -> Codes:
    from gguf.quants import Q4_K

    rows = raw.shape[0]
    b = raw.reshape(rows, -1, 144)  # d, dmin, 12 bytes of 6-bit scales and mins, 128 of codes
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(b[..., 4:16]).reshape(-1, 12))
    s = _half(b, 0)[..., None] * sc.reshape(*b.shape[:2], 8).astype(np.float32)
    dm = _half(b, 2)[..., None] * m.reshape(*b.shape[:2], 8).astype(np.float32)
    qs = b[..., 16:].reshape(rows, -1, 4, 1, 32)  # four pairs of sub-blocks: low, high nibbles
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=3).reshape(rows, -1)
    return q, s.reshape(rows, -1), (8 * s - dm).reshape(rows, -1)


def q8_0(raw: np.ndarray) -> Codes:
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, 34)  # d, 32 int8 codes
    d = _half(b, 0)
    q = (np.ascontiguousarray(b[..., 2:]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    q = q.reshape(rows, -1)
    codes = np.concatenate([q >> 4, q & 0x0F], axis=1)  # [hi | lo] along the inputs
    return codes, np.concatenate([16 * d, d], axis=1), np.concatenate([0 * d, 8 * d], axis=1)


# type -> (its codes, scales and zeros from raw block rows; copies of the inputs it takes)
MAPPED: dict[str, tuple[Callable[[np.ndarray], Codes], int]] = {
    "Q4_0": (q4_0, 1),
    "Q4_1": (q4_1, 1),
    "Q4_K": (q4_k, 1),
    "Q8_0": (q8_0, 2),
}


class GGUFEmbedding(nn.Module):
    """Token embeddings looked up in a GGUF tensor's rows as stored (a view of the memory-mapped
    file), each row read dequantized by gguf: exact, and only the rows used are paged in."""

    def __init__(self, tensor: Any, dim: int) -> None:
        super().__init__()
        self.raw, self.kind, self.dim = tensor.data, tensor.tensor_type, dim

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        from gguf import quants

        rows = self.raw[idx.reshape(-1).cpu().numpy()]
        x = torch.from_numpy(np.asarray(quants.dequantize(rows, self.kind), dtype=np.float32))
        return x.view(*idx.shape, self.dim)


def _raw_rows(tensor: Any, heads: int | None) -> np.ndarray:
    """The tensor's block rows (N, bytes per row), rows put back in the halves order where
    llama.cpp reordered them (the blocks run along rows, so whole rows move)."""
    raw = tensor.data.reshape(int(tensor.shape[-1]), -1)
    if heads is None:
        return raw
    order = gguf_file.unpermute_rotary(torch.arange(raw.shape[0]), heads).numpy()
    return raw[order]


def _as_stored(tensor: Any, heads: int | None, bias: torch.Tensor | None, head: bool) -> Int4Linear:
    """The Int4Linear of a Q4_0 / Q4_1 / Q4_K / Q8_0 tensor, packed PACK_ROWS rows at a time."""
    decode, repeat = MAPPED[tensor.tensor_type.name]
    n, k = int(tensor.shape[1]), int(tensor.shape[0])
    layer = Int4Linear(k, n, 32, bias, repeat=repeat, head=head)
    raw = _raw_rows(tensor, heads)
    for start in range(0, n, PACK_ROWS):
        q, s, z = (torch.from_numpy(a) for a in decode(raw[start : start + PACK_ROWS]))
        layer.set_rows(start, q, s.to(COMPUTE), z.to(COMPUTE))
    return layer


def _linear(
    path: Path, tensor: Any, heads: int | None, bias: torch.Tensor | None, mode: str, head: bool
) -> nn.Module:
    if tensor.tensor_type.name in MAPPED:
        layer = _as_stored(tensor, heads, bias, head)
        return RescoredHead(layer) if head else layer
    w = gguf_file._dequantize(path, tensor)
    w = w if heads is None else gguf_file.unpermute_rotary(w, heads)
    return quantize_weight(w, bias, mode, head=head)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread: a load is hundreds of small copies, and each one that torch splits
    over two threads waited about 15 ms for the second on the shared 2-core machine (0.01 ms
    on one thread; together 5 of the 8 s of SmolLM2's load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_gguf_quantized(path: str | Path, mode: str = "int4") -> tuple[Decoder, dict[str, Any]]:
    """The model of a GGUF file (eval mode, CPU) on its own quantized blocks, with the file's
    metadata (as gptlab.formats.gguf.read_gguf gives it, for the tokenizer). Tensors of types
    without a 4-bit form are quantized with `mode` (gptlab.quantize.MODES); the load logs how
    many were."""
    check_mode(mode)
    with _one_thread():
        return _load(Path(path), mode)


def _load(path: Path, mode: str) -> tuple[Decoder, dict[str, Any]]:
    header = gguf_file._reader(path)
    meta = header.metadata
    cfg, names, by_name = gguf_file._layout(path, header)
    with torch.device("meta"):
        model = new_model(cfg)
    shapes = expected_shapes(cfg)
    vectors = {}
    for n in names:
        tensor = by_name[n.gguf]
        gguf_file.check_shape(path, n, tuple(int(d) for d in reversed(tensor.shape)), shapes)
        if len(tensor.shape) == 1:
            w = gguf_file._dequantize(path, tensor)
            vectors[n.gptlab] = gguf_file.as_gptlab(meta, cfg, n, w)
    model.load_state_dict(vectors, strict=False, assign=True)
    kinds: Counter[str] = Counter()
    for n in names:
        tensor = by_name[n.gguf]
        if len(tensor.shape) == 1:
            continue
        if n.gptlab == "tok_emb.weight":
            model.tok_emb = GGUFEmbedding(tensor, cfg.emb_dim)
        layer_name = "out_head" if n.gptlab == "tok_emb.weight" else n.gptlab[: -len(".weight")]
        if n.gptlab == "tok_emb.weight" and not model.tied:
            continue
        heads = gguf_file.rotary_heads(meta, cfg, n.gptlab)
        bias = vectors.get(f"{layer_name}.bias")
        parent, _, attr = layer_name.rpartition(".")
        layer = _linear(path, tensor, heads, bias, mode, layer_name == "out_head")
        setattr(model.get_submodule(parent) if parent else model, attr, layer)
        kinds[tensor.tensor_type.name] += 1
        header.drop(tensor)  # read into the layer: the file's pages can go
    _log_kinds(path, kinds, mode)
    return model.eval(), meta


def _log_kinds(path: Path, kinds: Counter[str], mode: str) -> None:
    stored = ", ".join(f"{n} {k}" for k, n in kinds.items() if k in MAPPED)
    other = ", ".join(f"{n} {k}" for k, n in kinds.items() if k not in MAPPED)
    log.info("%s: linear layers as stored (int4): %s", path.name, stored or "none")
    if other:
        log.info("%s: dequantized and quantized to %s (no 4-bit form): %s", path.name, mode, other)
