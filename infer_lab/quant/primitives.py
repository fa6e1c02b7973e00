"""Uniform (integer) quantization primitives: quantize, dequantize, pack, size.

Round-to-nearest uniform quantization (see Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", and the
survey of Nagel et al. 2021) maps a real weight w to a b-bit integer code q:

* symmetric (absmax):   s = max|w| / (2^(b-1) - 1),   q = clamp(round(w / s)),  w ~ s * q
* asymmetric (zero-pt): s = (max w - min w) / (2^b - 1),  z = round(-min w / s),
                        q = clamp(round(w / s) + z, 0, 2^b - 1),  w ~ s * (q - z)

Each element inside the range is off by at most s / 2. The statistics (max, min) are
taken per tensor, per output channel (one row of an nn.Linear weight) or per group of
``group_size`` consecutive input weights within a row: smaller groups mean smaller
errors but more scales to store, which :func:`bits_per_weight` counts exactly.

Symmetric codes are signed (int8, range [-(2^(b-1)-1), 2^(b-1)-1]: the most negative
code is left out so that the grid is symmetric around zero); asymmetric codes are
unsigned (uint8, range [0, 2^b - 1]). Codes narrower than a byte are packed with
:func:`pack_int4` (two per byte) and :func:`pack_int2` (four per byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Granularity = Literal["tensor", "channel", "group"]
SUPPORTED_BITS = range(2, 9)


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor: codes, scales, zero points and how they were made.

    ``scale`` (and ``zero``) have shape (rows, n_groups), where the weight is viewed as
    (rows, cols) with cols its last dimension: per tensor (1, 1), per channel
    (rows, 1), per group (rows, cols // group_size).
    """

    q: torch.Tensor  # same shape as the weight; int8 (symmetric) or uint8 (asymmetric)
    scale: torch.Tensor  # (rows, n_groups)
    zero: torch.Tensor | None  # (rows, n_groups) uint8, None when symmetric
    bits: int
    granularity: Granularity
    group_size: int | None
    shape: torch.Size

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """Exact storage cost per weight: the code plus its share of scales and zeros."""
        return bits_per_weight(self.q.numel(), self.bits, self.scale.numel(), scale_bits,
                               zero_bits=0 if self.symmetric else self.bits)


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")


def check_finite(w: torch.Tensor, what: str = "weight") -> None:
    # A single NaN/Inf would make the whole group's scale NaN/Inf: fail loudly instead.
    if not torch.isfinite(w).all():
        bad = (~torch.isfinite(w)).sum().item()
        raise ValueError(f"{what} has {bad} NaN/Inf value(s); cannot quantize it")


def check_weight(w: torch.Tensor, what: str = "weight") -> None:
    """A non-empty, finite floating-point tensor of at least one dimension."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor, got {w.dtype}")
    if w.dim() == 0:
        raise ValueError(f"cannot quantize a 0-d {what}")
    if w.numel() == 0:
        raise ValueError(f"cannot quantize an empty {what} of shape {tuple(w.shape)}")
    check_finite(w, what)


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View w as (rows, n_groups, group) so that statistics reduce over the last dim."""
    if w.dim() == 0 or w.numel() == 0:
        raise ValueError(f"cannot quantize a tensor of shape {tuple(w.shape)}: it needs "
                         "at least one element and one dimension")
    cols = w.shape[-1]
    rows = w.numel() // cols
    w2 = w.reshape(rows, cols)  # (rows, cols)
    if granularity == "tensor":
        return w2.reshape(1, 1, -1)  # (1, 1, numel)
    if granularity == "channel":
        return w2.reshape(rows, 1, cols)  # (rows, 1, cols)
    if granularity == "group":
        if group_size is None or isinstance(group_size, bool) or not isinstance(
                group_size, int) or group_size <= 0:
            raise ValueError(f"granularity 'group' needs a positive integer group_size, "
                             f"got {group_size!r}")
        if cols % group_size:
            raise ValueError(f"group_size {group_size} does not divide the last "
                             f"dimension {cols}; pick a divisor (no padding is done)")
        return w2.reshape(rows, cols // group_size, group_size)  # (rows, G, gs)
    raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got "
                     f"{granularity!r}")


def _store(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Round the scale to its storage precision; a scale that underflows to 0 there
    # would turn codes into inf, so it is kept at the smallest normal number instead.
    return scale.clamp(min=torch.finfo(dtype).tiny).to(dtype).float()


def quantize(w: torch.Tensor, bits: int = 8, granularity: Granularity = "channel",
             group_size: int | None = None, symmetric: bool = True,
             scale_dtype: torch.dtype = torch.float32) -> QTensor:
    """Round-to-nearest quantization of ``w`` to ``bits``-bit integer codes.

    scale_dtype: the precision the scales are stored in. Codes are computed with the
    scale already rounded to it, so dequantizing with the stored scale is consistent.
    """
    check_bits(bits)
    check_weight(w)
    if granularity != "group" and group_size is not None:
        raise ValueError(f"group_size is only used with granularity='group', got "
                         f"granularity={granularity!r}")
    g = _grouped(w.detach().float(), granularity, group_size)  # (R, G, gs)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        amax = g.abs().amax(dim=-1)  # (R, G)
        # An all-zero group has no scale; any positive value gives codes of 0.
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        scale = _store(scale, scale_dtype)
        q = torch.round(g / scale[..., None]).clamp(-qmax, qmax)
        return QTensor(q.to(torch.int8).reshape(w.shape), scale.to(scale_dtype), None,
                       bits, granularity, group_size, w.shape)
    qmax = 2 ** bits - 1
    # Include 0 in the range so that zero (padding, pruned weights) is exact.
    lo = g.amin(dim=-1).clamp(max=0)  # (R, G)
    hi = g.amax(dim=-1).clamp(min=0)  # (R, G)
    scale = torch.where(hi > lo, (hi - lo) / qmax, torch.ones_like(hi))
    scale = _store(scale, scale_dtype)
    zero = torch.round(-lo / scale).clamp(0, qmax)  # (R, G)
    q = (torch.round(g / scale[..., None]) + zero[..., None]).clamp(0, qmax)
    return QTensor(q.to(torch.uint8).reshape(w.shape), scale.to(scale_dtype),
                   zero.to(torch.uint8), bits, granularity, group_size, w.shape)


def dequantize(qt: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_hat = s * (q - z), broadcast over each group."""
    return dequantize_codes(qt.q, qt.scale, qt.zero, qt.granularity, qt.group_size,
                            dtype)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                     granularity: Granularity, group_size: int | None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same as :func:`dequantize`, from the raw pieces a quantized module stores."""
    g = _grouped(q, granularity, group_size).float()  # (R, G, gs)
    if zero is not None:
        g = g - zero.float()[..., None]
    return (g * scale.float()[..., None]).reshape(q.shape).to(dtype)


def bits_per_weight(n_weights: int, bits: int, n_scales: int, scale_bits: int = 16,
                    zero_bits: int = 0) -> float:
    """(n * b + n_scales * (scale_bits + zero_bits)) / n, e.g. int4 g=64 fp16: 4.25."""
    if n_weights <= 0:
        raise ValueError("n_weights must be positive")
    return (n_weights * bits + n_scales * (scale_bits + zero_bits)) / n_weights


# -- packing ------------------------------------------------------------------------------
def _check_codes(q: torch.Tensor, bits: int, per_byte: int) -> None:
    if q.dtype != torch.uint8:
        raise TypeError(f"pack expects uint8 codes, got {q.dtype}")
    if q.dim() == 0 or q.shape[-1] % per_byte:
        raise ValueError(f"last dimension must be a multiple of {per_byte} to pack "
                         f"{per_byte} codes per byte, got shape {tuple(q.shape)}")
    if q.numel() and int(q.max()) >= 2 ** bits:
        raise ValueError(f"codes must lie in 0..{2 ** bits - 1}, got max {int(q.max())}")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: (..., n) uint8 in 0..15 -> (..., n/2) uint8.

    Even index in the low nibble, odd index in the high nibble.
    """
    _check_codes(q, 4, 2)
    return q[..., 0::2] | (q[..., 1::2] << 4)  # (..., n/2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., m) uint8 -> (..., 2m) uint8 in 0..15."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack expects uint8, got {packed.dtype}")
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)  # (..., 2m)


def pack_int2(q: torch.Tensor) -> torch.Tensor:
    """Four 2-bit codes per byte: (..., n) uint8 in 0..3 -> (..., n/4) uint8.

    Index 4k + j goes to bits 2j..2j+1 (index 4k in the lowest two bits).
    """
    _check_codes(q, 2, 4)
    return q[..., 0::4] | (q[..., 1::4] << 2) | (q[..., 2::4] << 4) | (q[..., 3::4] << 6)


def unpack_int2(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int2`: (..., m) uint8 -> (..., 4m) uint8 in 0..3."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack expects uint8, got {packed.dtype}")
    parts = [(packed >> s) & 0x03 for s in (0, 2, 4, 6)]
    return torch.stack(parts, dim=-1).flatten(-2)  # (..., 4m)
