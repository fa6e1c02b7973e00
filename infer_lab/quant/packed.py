"""Weight-only int8 / int4 linears that multiply the packed codes: no fp32 weight per call.

:class:`~.int8.Int8Linear` and :class:`~.int4.Int4Linear` dequantize W ~ s * (q - z) into a
new fp tensor on every call, then multiply: they read the codes, write and read an fp32
weight, so they decode *slower* than fp32. These layers hand the codes to PyTorch's own
packed CPU kernels, which dequantize inside the matmul:

* int8, per channel:  y = (x q^T) * s        ``aten._weight_int8pack_mm(x, q, s)``
* int4, per group:    y = x ((q' - 8) * s + zero)^T
  ``aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)``, with q' our
  unsigned nibble. Ours store s * (q' - z) (symmetric codes carry z = 8), so
  zero = (8 - z) * s: in fp32 both sides are exact, the weights bit-identical.

What the kernels take, checked with torch 2.13.0+cpu on AVX-512 (tests/test_quant_packed.py):

* Only **bf16** activations are vectorized (AVX-512 BF16): at 576x1536, batch 1, one thread,
  int8 64 us and int4 60 us against F.linear's 104 us fp32; fp32 and fp16 activations run a
  scalar loop (1.1-2.5 ms), 10-20x slower than F.linear. So ``compute_dtype`` defaults to
  bf16: x is rounded to bf16 for the product, accumulated in fp32 and the result (rounded
  to bf16, 2^-9 relative) returned in x's dtype, bias added there. ``compute_dtype=None``
  multiplies in x's own dtype: exact against the unfused layer, slow (for tests).
* int8: any N, K in fp32/fp16; with bf16, K must be a multiple of 16 (other K segfault or
  return NaN). The kernel's scales must have x's dtype: it gets ones and s multiplies the
  fp32 output, so the fp16 scales are never rounded to bf16.
* int4: groups of 32, 64, 128 or 256 only, N a multiple of 16, scales_and_zeros in x's
  dtype. Coarser groups (per channel, per tensor, 512) are re-expressed exactly as groups
  of the largest of these that divides them; N is padded with zero rows to a multiple of
  64 (the kernel's AVX-512 block, whose layout :meth:`PackedInt4Linear.dequantized_rows`
  reads back for an embedding lookup; checked against the codes when packing).

Whatever they cannot take (int8 per group or asymmetric, int4 groups finer than 32 or not a
multiple of 32, bf16 int8 with K % 16, a layer not on the CPU) keeps the unfused layer and
warns why (:class:`PackedFallback`): a slower answer, never a wrong one. The packed int4
buffer is this machine's layout: save the unfused model, pack after loading.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .int4 import Int4Linear
from .int8 import Int8Linear
from .primitives import Granularity, unpack_int4

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT4_GROUPS = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first
INT4_ROW_BLOCK = 64  # rows per block of the AVX-512 int4 layout
INT8_BF16_K = 16  # the bf16 int8 kernel needs K % 16 == 0


class PackedFallback(UserWarning):
    """A layer the packed kernels cannot run: it stays unfused, the message says why."""


def _kernel_dtype(x: torch.Tensor, compute: torch.dtype | None) -> torch.dtype:
    c = compute or x.dtype
    if c not in KERNEL_DTYPES:
        raise TypeError(f"the packed CPU kernels take fp32, bf16 or fp16 activations, got {c}; "
                        "use the unfused layer")
    return c


def _check_cpu(layer: nn.Module) -> str | None:
    dev = layer.scale.device
    return None if dev.type == "cpu" else f"on {dev}: these are CPU kernels"


class _PackedLinear(nn.Module):
    """What both packed layers share: the whole weight is its rows, and the packed
    buffers never leave the CPU (their layout is a CPU kernel's)."""

    out_features: int

    def dequantized_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        raise NotImplementedError

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.dequantized_rows(torch.arange(self.out_features), dtype)  # (N, K)

    def _apply(self, fn, recurse=True):
        if fn(torch.zeros(())).device.type != "cpu":
            raise RuntimeError(f"{type(self).__name__} holds a CPU kernel's layout and cannot "
                               "move off the CPU; quantize with the unfused scheme on that "
                               "device")
        return super()._apply(fn, recurse)


class PackedInt8Linear(_PackedLinear):
    """int8 per-channel weight-only linear through ``aten._weight_int8pack_mm``."""

    bits = 8
    is_quantized = True

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", qweight.contiguous())  # (N, K) int8
        self.register_buffer("scale", scale.reshape(-1))  # (N,) fp16, as Int8Linear's
        # The kernel's own scales: ones, a constant (not state), made once not per call.
        self.register_buffer("unit", torch.ones(self.out_features, dtype=compute_dtype or
                                                torch.float32), persistent=False)  # (N,)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @staticmethod
    def why_not(layer: Int8Linear, compute_dtype: torch.dtype | None = torch.bfloat16
                ) -> str | None:
        """Why ``layer`` cannot be packed, or None when it can."""
        if not layer.symmetric:
            return "asymmetric int8 (codes 0..255 and a zero point): the kernel takes int8 codes"
        if layer.granularity == "group":
            return f"int8 groups of {layer.group_size}: the kernel has one scale per row"
        if compute_dtype == torch.bfloat16 and layer.in_features % INT8_BF16_K:
            return (f"K={layer.in_features} is not a multiple of {INT8_BF16_K}: the bf16 int8 "
                    "kernel reads past such rows (segfaults or NaN)")
        return _check_cpu(layer)

    @classmethod
    def from_layer(cls, layer: Int8Linear, compute_dtype: torch.dtype | None = torch.bfloat16
                   ) -> PackedInt8Linear | Int8Linear:
        """The same codes and scales, packed; ``layer`` itself (with a warning) if it cannot."""
        reason = cls.why_not(layer, compute_dtype)
        if reason is not None:
            warnings.warn(f"int8 layer kept unfused: {reason}", PackedFallback, stacklevel=2)
            return layer
        # A per-tensor scale is the same scale on every row: exactly per-channel.
        scale = layer.scale.expand(layer.out_features, 1)  # (N, 1)
        return cls(layer.qweight, scale.clone(), layer.bias, compute_dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "channel",
                    compute_dtype: torch.dtype | None = torch.bfloat16
                    ) -> PackedInt8Linear | Int8Linear:
        """Round-to-nearest symmetric int8 of ``linear``, then :meth:`from_layer`."""
        return cls.from_layer(Int8Linear.from_linear(linear, granularity), compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _kernel_dtype(x, self.compute_dtype)
        if c == torch.bfloat16 and self.in_features % INT8_BF16_K:
            c = torch.float32  # bf16 x from a bf16 model: the bf16 kernel cannot take this K
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(c).contiguous()  # (M, K)
        # Unit scales in the kernel, s after it: bf16 * fp16 promotes to fp32, one op.
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.unit.to(c))  # (M, N)
        y = torch.mul(y, self.scale).to(x.dtype)  # (M, N) = (x q^T) * s
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)  # (..., N)

    def dequantized_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        """Rows of W ~ s * q (R, K): what an embedding lookup tied to this layer reads."""
        return (self.qweight[rows].float() * self.scale[rows, None].float()).to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, int8 packed per channel, "
                f"compute={self.compute_dtype}")


def int4_kernel_group(layer: Int4Linear) -> int | None:
    """The largest group the kernel takes that tiles ``layer``'s groups, or None."""
    width = layer.group_size if layer.granularity == "group" else layer.in_features
    return next((g for g in INT4_GROUPS if width % g == 0), None)


def decode_int4_rows(packed: torch.Tensor, rows: torch.Tensor, k: int,
                     block: int = INT4_ROW_BLOCK) -> torch.Tensor:
    """Nibbles (R, K) of ``rows``: each block of ``block`` rows is K x block/2 bytes, byte
    (k, j) holding row j in its low nibble and row j + block/2 in its high one. PyTorch
    packs blocks of 64 rows on AVX-512 CPUs and of 32 on CPUs without it."""
    half = block // 2
    blocks = packed.view(-1, k, half)  # (N/block, K, block/2)
    j = rows % block
    byte = blocks[rows // block, :, j % half]  # (R, K)
    return (byte >> (4 * (j >= half)).to(torch.uint8)[:, None]) & 0x0F  # (R, K)


class PackedInt4Linear(_PackedLinear):
    """int4 group-wise weight-only linear through ``aten._weight_int4pack_mm_for_cpu``."""

    bits = 4
    is_quantized = True

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 in_features: int, out_features: int, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype | None = torch.bfloat16,
                 row_block: int | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.compute_dtype = compute_dtype
        # The rows per block of this machine's packed layout (found when packing), or None
        # where dequantized_rows cannot read it back.
        self.row_block = row_block
        self.rows_readable = row_block is not None
        self.register_buffer("packed", packed)  # (N_pad, K/2) uint8, the kernel's layout
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # (K/g, N_pad, 2)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @staticmethod
    def why_not(layer: Int4Linear) -> str | None:
        """Why ``layer`` cannot be packed, or None when it can."""
        if int4_kernel_group(layer) is None:
            width = layer.group_size if layer.granularity == "group" else layer.in_features
            return (f"groups of {width} weights: the kernel takes groups of 32, 64, 128 or 256 "
                    "and none of them tiles these")
        return _check_cpu(layer)

    @classmethod
    def from_layer(cls, layer: Int4Linear, compute_dtype: torch.dtype | None = torch.bfloat16
                   ) -> PackedInt4Linear | Int4Linear:
        """The same codes, scales and zero points, packed; ``layer`` (with a warning) if not."""
        reason = cls.why_not(layer)
        if reason is not None:
            warnings.warn(f"int4 layer kept unfused: {reason}", PackedFallback, stacklevel=2)
            return layer
        N, K, g = layer.out_features, layer.in_features, int4_kernel_group(layer)
        nib = unpack_int4(layer.qweight)  # (N, K) uint8 0..15: symmetric codes + 8
        width = layer.group_size if layer.granularity == "group" else K
        # Each of our groups becomes width / g kernel groups with the same scale and zero.
        s = layer.scale.float().expand(N, -1).repeat_interleave(width // g, 1)  # (N, K/g)
        z = (torch.full_like(s, 8.0) if layer.zero is None else
             layer.zero.float().expand(N, -1).repeat_interleave(width // g, 1))  # (N, K/g)
        sz = torch.stack((s, (8 - z) * s), dim=-1)  # (N, K/g, 2): w = (q' - 8) s + (8 - z) s
        pad = -N % INT4_ROW_BLOCK
        if pad:  # code 8 and scale 0: padded rows are zero, their outputs dropped
            nib = torch.cat((nib, torch.full((pad, K), 8, dtype=torch.uint8)))  # (N_pad, K)
            sz = torch.cat((sz, sz.new_zeros(pad, K // g, 2)))  # (N_pad, K/g, 2)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nib.to(torch.int32), 1)
        every = torch.arange(N + pad)
        block = next((b for b in (INT4_ROW_BLOCK, INT4_ROW_BLOCK // 2)
                      if torch.equal(decode_int4_rows(packed, every, K, b), nib)), None)
        sz = sz.transpose(0, 1).contiguous().to(compute_dtype or torch.float32)  # (K/g, N_pad, 2)
        return cls(packed, sz, g, K, N, layer.bias, compute_dtype, block)

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "group",
                    group_size: int | None = 64, symmetric: bool = True,
                    compute_dtype: torch.dtype | None = torch.bfloat16
                    ) -> PackedInt4Linear | Int4Linear:
        """Round-to-nearest int4 of ``linear`` (as :class:`Int4Linear`), then packed."""
        layer = Int4Linear.from_linear(linear, granularity, group_size, symmetric)
        return cls.from_layer(layer, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = _kernel_dtype(x, self.compute_dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(c).contiguous()  # (M, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.packed, self.group_size, self.scales_and_zeros.to(c))  # (M, N_pad)
        y = y[:, :self.out_features].to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)  # (..., N)

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned nibbles q' (R, K) of ``rows`` (all rows by default)."""
        if not self.rows_readable:
            raise NotImplementedError("this CPU packs int4 in a layout this module does not "
                                      "read back; keep the unfused layer's codes to read rows")
        rows = torch.arange(self.out_features) if rows is None else rows
        return decode_int4_rows(self.packed, rows, self.in_features, self.row_block)

    def dequantized_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        """Rows of W = (q' - 8) s + zero (R, K), with the scales the kernel multiplies by."""
        q = self.codes(rows).float()  # (R, K)
        sz = self.scales_and_zeros[:, rows].float().repeat_interleave(self.group_size, 0)
        return ((q - 8) * sz[..., 0].T + sz[..., 1].T).to(dtype)  # (R, K)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, int4 packed, kernel "
                f"group_size={self.group_size}, compute={self.compute_dtype}")


def pack_layer(layer: nn.Module, compute_dtype: torch.dtype | None = torch.bfloat16
               ) -> tuple[nn.Module, str | None]:
    """An Int8Linear / Int4Linear packed, or kept, and the reason when kept (no warning)."""
    if isinstance(layer, Int8Linear):
        reason = PackedInt8Linear.why_not(layer, compute_dtype)
        packed = PackedInt8Linear
    elif isinstance(layer, Int4Linear):
        reason, packed = PackedInt4Linear.why_not(layer), PackedInt4Linear
    else:
        raise TypeError(f"pack_layer takes Int8Linear or Int4Linear, got {type(layer).__name__}")
    if reason is not None:
        return layer, reason
    return packed.from_layer(layer, compute_dtype), None
