"""Quantized linear layers for inference: int8 and int4 weights, applied explicitly.

Why: each new token reads every weight of the model once, so decoding on a CPU is bound by
how many bytes that is (SmolLM2-135M: 540 MB a token in float32). Fewer bytes per weight is
the only way to move it, and torch ships the kernels:

- `int8`, weight-only, one scale per output channel: w = q * s, q int8
  (torch._weight_int8pack_mm);
- `int4`, weight-only, one scale and zero per group of `group_size` inputs:
  w = (q - 8) * s + z, q in 0..15 (torch._weight_int4pack_mm_for_cpu; on CUDA
  torch._weight_int4pack_mm, which packs its weights differently);
- `int8-dynamic`: int8 weights per channel, and each call's activations quantized to uint8 with
  one scale for the whole tensor, multiplied by fbgemm (torch.ops.quantized.linear_dynamic;
  CPU only).

The weight-only kernels are fast on CPU only with bfloat16 activations and scales (on the
2-core AMD EPYC this project is measured on, float32 activations ran the same int4 product
about 30x slower, float16 as slowly): so those layers take bfloat16 in, give the caller's dtype
back, and keep their scales (and zeros) in bfloat16. The quantizers here choose
bfloat16-representable scales, so `dequantized()` is the weight a layer computes with, and the
only difference between a layer and `F.linear` on that weight is the rounding of the
activations and of the output to bfloat16 (at most 2^-8 of sum |x| |w| per output; the tests
assert it).

`quantize_model(model, mode)` replaces the nn.Linear layers of a model's blocks (LoRA's base
layers included) and its output head, in place, the way gptlab.lora applies adapters; the
architecture knows nothing of it. Embeddings and norms stay as they are. Quantization is for
inference: the layers hold no trainable parameters.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.errors import GptlabError

log = logging.getLogger("gptlab")

MODES = ("int8", "int4", "int8-dynamic")
GROUP_SIZES = (32, 64, 128, 256)  # what the int4 kernels accept
COMPUTE = torch.bfloat16  # the weight-only kernels' fast activation and scale type
ROW_BLOCK = 64  # int4 rows are packed (and padded) in blocks of this many
PACK_ROWS = 4096  # rows packed at a time: int32 codes of a whole head would be ~100 MB


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _check_device(layer: nn.Module, x: torch.Tensor, packed: torch.Tensor) -> None:
    if x.device != packed.device:
        raise GptlabError(
            f"{type(layer).__name__} was quantized on {packed.device}, called on {x.device}; "
            "quantize a model on the device it runs on"
        )


# ---- int8, weight-only ------------------------------------------------------------------------


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), s bfloat16 (N,)) with w ~ q * s: symmetric, one scale per row, the scale
    rounded to bfloat16 before the codes are chosen (so q * s is what the kernel uses)."""
    w = w.detach().float()
    s = (w.abs().amax(dim=1) / 127).to(COMPUTE)
    s = torch.where(s == 0, torch.ones_like(s), s)  # an all-zero row: any scale is exact
    q = torch.round(w / s.float()[:, None]).clamp(-128, 127).to(torch.int8)
    return q, s


def _int8_kernel(device: torch.device) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        "aten::_weight_int8pack_mm", device.type.upper()
    )


class Int8Linear(nn.Module):
    """y = x (q s)^T + b with int8 weights q (N, K) and one scale per output channel; through
    torch._weight_int8pack_mm where the device has it (CPU), else the weight is widened per
    call (no gain in speed, only in memory)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scales", scales.to(COMPUTE).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.kernel = _int8_kernel(q.device)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        q, s = quantize_int8(layer.weight)
        return cls(q, s, layer.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (N, K) this layer multiplies by."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_device(self, x, self.weight)
        rows = _rows(x).to(COMPUTE)
        if self.kernel:
            y = torch._weight_int8pack_mm(rows, self.weight, self.scales)
        else:
            y = F.linear(rows, self.weight.to(COMPUTE)) * self.scales
        y = y.to(x.dtype)
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)


# ---- int4, weight-only, grouped ---------------------------------------------------------------


def quantize_int4(
    w: torch.Tensor, group_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8 (N, K) in 0..15, s (N, K/g), z (N, K/g), both bfloat16) with
    w ~ (q - 8) s + z per group of `group_size` inputs: asymmetric, from each group's minimum
    and maximum, the scale and zero rounded to bfloat16 before the codes are chosen."""
    n, k = w.shape
    g = w.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    s = ((hi - lo) / 15).to(COMPUTE)
    s = torch.where(s == 0, torch.ones_like(s), s)  # a constant group: exact with any scale
    z = (lo + 8 * s.float()).to(COMPUTE)
    q = torch.round((g - z.float()[..., None]) / s.float()[..., None] + 8).clamp(0, 15)
    return q.to(torch.uint8).reshape(n, k), s, z


def dequantize_int4(
    q: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The float32 weight (N, K) of int4 codes with per-group scales and zeros."""
    n, k = q.shape
    g = q.float().reshape(n, k // group_size, group_size) - 8
    return (g * s.float()[..., None] + z.float()[..., None]).reshape(n, k)


def _inner_k_tiles(k: int) -> int:
    """CUDA's int4 packing takes K in tiles of 16 x inner_k_tiles; the largest that fits."""
    return next((t for t in (8, 4, 2) if k % (16 * t) == 0), 2)


def _packed(n: int, k: int, device: torch.device) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and type of torch's packed int4 weight of n rows and k inputs on `device`."""
    if device.type == "cpu":
        return (n, k // 2), torch.uint8
    tiles = _inner_k_tiles(k)
    return (n // 8, k // (16 * tiles), 32, tiles // 2), torch.int32


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """torch's packed int4 layout of codes (rows, K) in 0..15, for the codes' device."""
    if codes.device.type == "cpu":
        return torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # even column: high nibble
    return torch._convert_weight_to_int4pack(pairs, _inner_k_tiles(codes.shape[1]))


class Int4Linear(nn.Module):
    """y = x w^T + b with w = (q - 8) s + z per group of inputs, q int4, through torch's int4
    kernel. Rows are padded to a multiple of ROW_BLOCK (the CPU kernel's packing needs 16)
    with zero weights, and cut off again. With `repeat` r, the layer multiplies [x, ..., x]
    (r copies) by a weight of r K inputs: how a GGUF Q8_0 tensor runs as two int4 halves
    (gptlab.formats.gguf_quant)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = 32,
        bias: torch.Tensor | None = None,
        repeat: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        k = in_features * repeat
        if group_size not in GROUP_SIZES or k % group_size:
            raise GptlabError(
                f"int4: {in_features} inputs do not split into groups of {group_size} "
                f"(choose from {', '.join(map(str, GROUP_SIZES))})"
            )
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.repeat = group_size, repeat
        n = -(-out_features // ROW_BLOCK) * ROW_BLOCK
        shape, dtype = _packed(n, k, torch.device(device))
        self.register_buffer("packed", torch.empty(shape, dtype=dtype, device=device))
        self.register_buffer(
            "scales_zeros", torch.zeros(k // group_size, n, 2, dtype=COMPUTE, device=device)
        )
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def set_rows(self, start: int, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> None:
        """Pack rows start.. from codes q (rows, r K) and their groups' scales and zeros
        (rows, r K / g). Rows come in whole blocks of ROW_BLOCK, but for the last ones, after
        which the padding rows get zero weights."""
        rows = q.shape[0]
        if start % ROW_BLOCK or (rows % ROW_BLOCK and start + rows != self.out_features):
            raise ValueError(f"rows {start}:{start + rows} are not whole blocks of {ROW_BLOCK}")
        self.scales_zeros[:, start : start + rows, 0] = s.t()
        self.scales_zeros[:, start : start + rows, 1] = z.t()
        n = self.scales_zeros.shape[1]
        if start + rows == self.out_features < n:
            q = torch.cat([q, q.new_full((n - start - rows, q.shape[1]), 8)])
        per = n // self.packed.shape[0]  # rows per index of the packed tensor's first dim
        self.packed[start // per : (start + q.shape[0]) // per] = _pack(q.to(self.packed.device))

    @classmethod
    def from_codes(
        cls,
        q: torch.Tensor,
        s: torch.Tensor,
        z: torch.Tensor,
        group_size: int,
        bias: torch.Tensor | None = None,
    ) -> Int4Linear:
        """The layer of codes q (N, K), scales s and zeros z (N, K / group_size)."""
        layer = cls(q.shape[1], q.shape[0], group_size, bias, device=q.device)
        for start in range(0, q.shape[0], PACK_ROWS):
            end = start + PACK_ROWS
            layer.set_rows(start, q[start:end], s[start:end], z[start:end])
        return layer

    @classmethod
    def from_linear(cls, layer: nn.Linear, group_size: int = 32) -> Int4Linear:
        q, s, z = quantize_int4(layer.weight, group_size)
        return cls.from_codes(q, s, z, group_size, layer.bias)

    def _mm(self, rows: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
        if self.packed.device.type == "cpu":
            return torch._weight_int4pack_mm_for_cpu(
                rows, self.packed, self.group_size, scales_zeros
            )
        return torch._weight_int4pack_mm(rows, self.packed, self.group_size, scales_zeros)

    def dequantized(self) -> torch.Tensor:
        """The weight (N, r K) the packed codes stand for, read back through the kernel with
        float32 activations (bfloat16 on CUDA, the only type it takes). Slow: for checks."""
        k = self.scales_zeros.shape[0] * self.group_size
        dtype = torch.float32 if self.packed.device.type == "cpu" else COMPUTE
        eye = torch.eye(k, dtype=dtype, device=self.packed.device)
        return self._mm(eye, self.scales_zeros.to(dtype)).t()[: self.out_features].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_device(self, x, self.packed)
        rows = _rows(x).to(COMPUTE)
        if self.repeat > 1:
            rows = rows.repeat(1, self.repeat)
        y = self._mm(rows, self.scales_zeros)
        y = y[:, : self.out_features].to(x.dtype)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


# ---- int8 dynamic (fbgemm) ----------------------------------------------------------------------


class DynamicInt8Linear(nn.Module):
    """y ~ x w^T + b with int8 weights (one scale per output channel) and each call's
    activations quantized to uint8 with one scale for the tensor (reduce_range: 7 bits, safe
    on every x86 fbgemm kernel), through torch.ops.quantized.linear_dynamic. CPU only.

    torch marks its quantized tensor types deprecated (they are how fbgemm's weights are
    built); the warning is silenced where the weight is packed, once per layer."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        if layer.weight.device.type != "cpu":
            raise GptlabError("int8-dynamic runs on CPU only; use int8 or int4 on a GPU")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        w = layer.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).double().clamp_min(1e-12)
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        bias = None if layer.bias is None else layer.bias.detach().float()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantize_per_channel.*")
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            q = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (N, K) this layer's int8 weights stand for."""
        q, _ = torch.ops.quantized.linear_unpack(self.packed)
        return q.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x).float()
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


# ---- a whole model ----------------------------------------------------------------------------


def quantize_linear(layer: nn.Linear, mode: str, group_size: int = 32) -> nn.Module:
    """The `mode` twin of one nn.Linear (int4 falls back to int8 where the inputs do not
    split into groups; quantize_model says how many did)."""
    if mode == "int8":
        return Int8Linear.from_linear(layer)
    if mode == "int8-dynamic":
        return DynamicInt8Linear(layer)
    if layer.in_features % group_size:
        return Int8Linear.from_linear(layer)
    return Int4Linear.from_linear(layer, group_size)


def _targets(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear in the blocks, then the output head."""
    for block in model.blocks:  # type: ignore[attr-defined]
        for parent in block.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    yield parent, name, child
    if type(model.out_head) is nn.Linear:  # type: ignore[attr-defined]
        yield model, "out_head", model.out_head  # type: ignore[attr-defined]


def check_mode(mode: str, group_size: int = 32) -> None:
    """One GptlabError line for a mode or group size the layers do not have."""
    if mode not in MODES:
        raise GptlabError(f"unknown quantization {mode!r}; choose from {', '.join(MODES)}")
    if group_size not in GROUP_SIZES:
        sizes = ", ".join(map(str, GROUP_SIZES))
        raise GptlabError(f"int4 group size {group_size} is not one of {sizes}")


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    """Replace the linear layers of `model`'s blocks and its output head with `mode`'s
    quantized layers (MODES), in place, on the device the model is on; returns the model in
    eval mode. A tied head is untied (the embedding keeps its float weights)."""
    check_mode(mode, group_size)
    targets = list(_targets(model))
    fallback = 0
    for parent, name, layer in targets:
        quantized = quantize_linear(layer, mode, group_size)
        fallback += mode == "int4" and isinstance(quantized, Int8Linear)
        setattr(parent, name, quantized)
    if fallback:
        log.info(
            "quantize: %d of %d layers int8, their inputs not a multiple of %d",
            fallback,
            len(targets),
            group_size,
        )
    return model.eval()
