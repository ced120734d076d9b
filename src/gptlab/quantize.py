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
activations and of the output to bfloat16 (2^-8 relative each: at most 2^-7 of sum |x| |w|
per output; the tests assert it).

`quantize_model(model, mode)` replaces the nn.Linear layers of a model's blocks (LoRA's base
layers included) and its output head, in place, the way gptlab.lora applies adapters; the
architecture knows nothing of it. Embeddings and norms stay as they are. Quantization is for
inference: the layers hold no trainable parameters.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
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


def _rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) as contiguous rows (M, K) of `dtype`, as the kernels take them."""
    return x.reshape(-1, x.shape[-1]).to(dtype).contiguous()


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

    def max_row_norm(self) -> float:
        return float(self.dequantized().norm(dim=1).max())

    def exact(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Outputs `cols` of float32 `rows` (M, K) in float32 throughout (RescoredHead)."""
        w = self.weight[cols].float() * self.scales[cols].float()[:, None]
        return F.linear(rows, w, None if self.bias is None else self.bias[cols])

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (N, K) this layer multiplies by."""
        return self.weight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_device(self, x, self.weight)
        rows = _rows(x, COMPUTE)
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
        return pack_cpu(codes)
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # even column: high nibble
    return torch._convert_weight_to_int4pack(pairs, _inner_k_tiles(codes.shape[1]))


def pack_cpu(codes: torch.Tensor) -> torch.Tensor:
    """torch._convert_weight_to_int4pack_for_cpu(codes, 1) of codes (rows, K) in 0..15, rows
    a multiple of ROW_BLOCK, computed without it, in numpy on bytes: the kernel takes int32
    codes and took most of a GGUF load; this is about 10x faster. Its layout, each block of
    64 rows stored as K x 32 bytes: byte (k, j) holds row j's weight k in its low nibble and
    row j + 32's in its high one (tests/test_quantize.py checks it against the kernel)."""
    n, k = codes.shape
    rows = codes.to(torch.uint8).numpy().reshape(n // ROW_BLOCK, 2, ROW_BLOCK // 2, k)
    pairs = rows[:, 0] | (rows[:, 1] << 4)  # (blocks, 32, K)
    return torch.from_numpy(np.ascontiguousarray(pairs.transpose(0, 2, 1)).reshape(n, k // 2))


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
        head: bool = False,
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
        self.max_norm = 0.0 if head else None  # a head's largest row norm (RescoredHead)

    def set_rows(self, start: int, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> None:
        """Pack rows start.. from codes q (rows, r K) and their groups' scales and zeros
        (rows, r K / g). Rows come in whole blocks of ROW_BLOCK, but for the last ones, after
        which the padding rows get zero weights."""
        rows = q.shape[0]
        if start % ROW_BLOCK or (rows % ROW_BLOCK and start + rows != self.out_features):
            raise ValueError(f"rows {start}:{start + rows} are not whole blocks of {ROW_BLOCK}")
        self.scales_zeros[:, start : start + rows, 0] = s.t()
        self.scales_zeros[:, start : start + rows, 1] = z.t()
        if self.max_norm is not None:
            w = dequantize_int4(q, s, z, self.group_size).view(rows, self.repeat, -1).sum(dim=1)
            self.max_norm = max(self.max_norm, float(w.norm(dim=1).max()))
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
        head: bool = False,
    ) -> Int4Linear:
        """The layer of codes q (N, K), scales s and zeros z (N, K / group_size)."""
        layer = cls(q.shape[1], q.shape[0], group_size, bias, device=q.device, head=head)
        for start in range(0, q.shape[0], PACK_ROWS):
            end = start + PACK_ROWS
            layer.set_rows(start, q[start:end], s[start:end], z[start:end])
        return layer

    def _mm(self, rows: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
        if self.packed.device.type == "cpu":
            return torch._weight_int4pack_mm_for_cpu(
                rows, self.packed, self.group_size, scales_zeros
            )
        return torch._weight_int4pack_mm(rows, self.packed, self.group_size, scales_zeros)

    def max_row_norm(self) -> float:
        """The largest row norm of the weight, as set_rows measured it (built as a head)."""
        if self.max_norm is None:
            raise ValueError("this int4 layer was not built as a head: no row norms")
        return self.max_norm

    def exact(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Outputs `cols` (whole blocks of ROW_BLOCK rows, sorted, the last one cut at
        out_features; CPU) of float32 `rows` (M, K), through the kernel's float32 path: no
        rounding of x, scales or output (RescoredHead)."""
        n, g = self.scales_zeros.shape[1], self.scales_zeros.shape[0]
        blocks = torch.unique(cols // ROW_BLOCK)
        packed = self.packed.view(n // ROW_BLOCK, ROW_BLOCK, -1)[blocks].flatten(0, 1)
        sz = self.scales_zeros.view(g, n // ROW_BLOCK, ROW_BLOCK, 2)[:, blocks].flatten(1, 2)
        if self.repeat > 1:
            rows = rows.repeat(1, self.repeat)
        y = torch._weight_int4pack_mm_for_cpu(rows, packed, self.group_size, sz.float())
        y = y[:, : len(cols)]
        return y if self.bias is None else y + self.bias[cols]

    def dequantized(self) -> torch.Tensor:
        """The weight (N, K) the packed codes stand for (the sum of its `repeat` parts), read
        back through the kernel with float32 activations (bfloat16 on CUDA, the only type it
        takes). Slow: for checks."""
        k = self.scales_zeros.shape[0] * self.group_size
        dtype = torch.float32 if self.packed.device.type == "cpu" else COMPUTE
        eye = torch.eye(k, dtype=dtype, device=self.packed.device)
        w = self._mm(eye, self.scales_zeros.to(dtype)).t()[: self.out_features].float()
        return w.view(self.out_features, self.repeat, self.in_features).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_device(self, x, self.packed)
        rows = _rows(x, COMPUTE)
        if self.repeat > 1:
            rows = rows.repeat(1, self.repeat)
        y = self._mm(rows, self.scales_zeros)
        y = y[:, : self.out_features].to(x.dtype)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


# ---- the output head ----------------------------------------------------------------------------

RESCORE_BLOCKS = 32  # at most this many blocks of ROW_BLOCK outputs recomputed per call


class RescoredHead(nn.Module):
    """An int8 or int4 output head whose best logits are recomputed in float32.

    Why: the fast kernels round activations and outputs to bfloat16, and a logit of 25 then
    moves in steps of 0.125: two candidates 0.08 apart became a tie on SmolLM2 (greedy took
    the lower id, and a different answer). Here every logit that could be the best of its row
    is recomputed without rounding: the bfloat16 error of output n is at most
    |x - bf16(x)| max_n |w_n| (the activations') plus 2^-8 |y_n| (the output's), so each
    output within twice that of its row's best is a candidate, and the blocks of ROW_BLOCK
    outputs holding candidates go through the layer's float32 path (`exact`). Where more
    than RESCORE_BLOCKS blocks would (a flat distribution, nothing to separate), the rounded
    logits are kept. CPU only (the int4 blocks are the CPU kernel's layout)."""

    def __init__(self, layer: Int8Linear | Int4Linear) -> None:
        super().__init__()
        self.layer = layer
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.max_norm = layer.max_row_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        rows = _rows(x, torch.float32)
        flat = y.reshape(-1, self.out_features)
        top = flat.amax(dim=1, keepdim=True)
        lost = (rows - rows.to(COMPUTE).float()).norm(dim=1, keepdim=True)
        margin = 2 * (lost * self.max_norm + 2**-8 * top.abs())
        near = (flat >= top - margin).any(dim=0)
        n = -(-self.out_features // ROW_BLOCK) * ROW_BLOCK
        blocks = F.pad(near, (0, n - self.out_features)).view(-1, ROW_BLOCK).any(dim=1)
        blocks = blocks.nonzero()[:, 0]
        if len(blocks) > RESCORE_BLOCKS:
            return y
        cols = (blocks[:, None] * ROW_BLOCK + torch.arange(ROW_BLOCK)).flatten()
        cols = cols[cols < self.out_features]
        flat[:, cols] = self.layer.exact(rows, cols)
        return y


# ---- int8 dynamic (fbgemm) ----------------------------------------------------------------------


class DynamicInt8Linear(nn.Module):
    """y ~ x w^T + b with int8 weights (one scale per output channel) and each call's
    activations quantized to uint8 with one scale for the tensor (reduce_range: 7 bits, safe
    on every x86 fbgemm kernel), through torch.ops.quantized.linear_dynamic. CPU only.

    torch marks its quantized tensor types deprecated (they are how fbgemm's weights are
    built); the warning is silenced where the weight is packed, once per layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.device.type != "cpu":
            raise GptlabError("int8-dynamic runs on CPU only; use int8 or int4 on a GPU")
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).double().clamp_min(1e-12)
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        bias = None if bias is None else bias.detach().float()
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
        rows = _rows(x, torch.float32)
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


# ---- a whole model ----------------------------------------------------------------------------


def quantize_weight(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mode: str,
    group_size: int = 32,
    head: bool = False,
) -> nn.Module:
    """The `mode` layer of one weight (N, K) and bias, on the weight's device (int4 falls back
    to int8 where K does not split into groups; quantize_model says how many did). A `head`
    on CPU is a RescoredHead of its weight-only layer."""
    if mode == "int8-dynamic":
        return DynamicInt8Linear(weight, bias)
    if mode == "int8" or weight.shape[1] % group_size:
        layer: Int8Linear | Int4Linear = Int8Linear(*quantize_int8(weight), bias)
    else:
        codes = quantize_int4(weight, group_size)
        layer = Int4Linear.from_codes(*codes, group_size, bias, head=head)
    return RescoredHead(layer) if head and weight.device.type == "cpu" else layer


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


INT4_CUDA_CAPABILITY = (8, 0)  # torch's CUDA int4 kernel needs Ampere or newer


def check_device(mode: str, device: torch.device) -> None:
    """One GptlabError line where `mode` has no kernel on `device`, before anything loads:
    int4 runs on CPU and on CUDA GPUs of compute capability 8.0 and up, int8-dynamic on CPU;
    int8 runs everywhere (widened per call where torch has no int8 kernel)."""
    check_mode(mode)
    if device.type == "cpu" or mode == "int8":
        return
    if mode == "int4" and device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability >= INT4_CUDA_CAPABILITY:
            return
        where = f"{device} (compute capability {capability[0]}.{capability[1]})"
    else:
        where = str(device)
    choice = "int8 or none" if mode == "int4" else "int8 or int4"
    raise GptlabError(f"quantize {mode}: torch has no {mode} kernel on {where}; use {choice}")


def footprint(model: nn.Module) -> tuple[int, int]:
    """(weights, bytes) of a model as it is held: parameters counted once (a tied head once),
    a quantized layer by the weights it stands for and the bytes it keeps, buffers by their
    bytes, and a GGUF embedding (gptlab.formats.gguf_quant) by its rows as stored."""
    weights, size, seen = 0, 0, set()
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int4Linear, DynamicInt8Linear)):
            bias = getattr(module, "bias", None)  # a buffer (fbgemm packs its own)
            weights += module.in_features * module.out_features + (
                0 if bias is None else bias.numel()
            )
        if isinstance(module, DynamicInt8Linear):
            size += module.in_features * module.out_features  # int8, inside fbgemm's packing
        stored = getattr(module, "raw", None)  # a GGUF embedding's memory-mapped rows
        if stored is not None:
            weights, size = weights + stored.shape[0] * module.dim, size + stored.nbytes
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(t) not in seen:
                seen.add(id(t))
                size += t.numel() * t.element_size()
                weights += t.numel() if isinstance(t, nn.Parameter) else 0
    head = getattr(model, "out_head", None)
    if getattr(model, "tied", False) and head is not None and not isinstance(head, nn.Linear):
        weights -= head.in_features * head.out_features  # the embedding's, counted there
    return weights, size


def quantization_level(model: nn.Module) -> str:
    """What the model's linear layers hold: "int4", "int8", "int4+int8" (a mix), or the
    float type of its parameters ("F32", "BF16", "F16") when none is quantized."""
    kinds = {
        "int4": Int4Linear,
        "int8": (Int8Linear, DynamicInt8Linear),
    }
    found = [k for k, cls in kinds.items() if any(isinstance(m, cls) for m in model.modules())]
    if found:
        return "+".join(found)
    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "BF16", torch.float16: "F16"}.get(dtype, "F32")


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, group_size: int = 32) -> nn.Module:
    """Replace the linear layers of `model`'s blocks and its output head with `mode`'s
    quantized layers (MODES), in place, on the device the model is on; returns the model in
    eval mode. A tied head is untied (the embedding keeps its float weights)."""
    check_mode(mode, group_size)
    targets = list(_targets(model))
    fallback = 0
    for parent, name, layer in targets:
        quantized = quantize_weight(layer.weight, layer.bias, mode, group_size, parent is model)
        fallback += mode == "int4" and isinstance(
            getattr(quantized, "layer", quantized), Int8Linear
        )
        setattr(parent, name, quantized)
    if fallback:
        log.info(
            "quantize: %d of %d layers int8, their inputs not a multiple of %d",
            fallback,
            len(targets),
            group_size,
        )
    return model.eval()
