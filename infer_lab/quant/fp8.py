"""FP8 E4M3 and E5M2, simulated in fp32 with a per-tensor scale.

Micikevicius et al. 2022, "FP8 Formats for Deep Learning". An 8-bit float is
sign | exponent (E bits, bias b) | mantissa (M bits):

    normal     (e > 0):  (-1)^s * 2^(e - b) * (1 + m / 2^M)
    subnormal  (e = 0):  (-1)^s * 2^(1 - b) * (m / 2^M)

E4M3 (b = 7) gives up infinities to reach further: only S.1111.111 is NaN, so the
largest value is 1.75 * 2^8 = 448 (torch.float8_e4m3fn). E5M2 (b = 15) is IEEE-like,
with Inf and NaN at e = 31, largest value 1.75 * 2^15 = 57344 (torch.float8_e5m2).
E4M3 has more precision (weights, activations), E5M2 more range (gradients).

Rounding to the grid needs no FP8 hardware: inside the binade [2^k, 2^(k+1)) the grid
step is 2^(k - M), so

    x_hat = round_half_even(x / step) * step,   step = 2^(max(k, 1 - b) - M)

then saturate to +-max (an overflow clips instead of becoming NaN/Inf, as FP8
inference kernels do). A per-tensor scale s = amax / max maps the weight onto the
format's range first: w_hat = s * fp8(w / s). Storage: 8 bits + one fp32 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infer_lab.quant.primitives import check_finite


@dataclass(frozen=True)
class FP8Format:
    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max_value: float  # largest finite value: saturation point
    ieee_specials: bool  # True: e = all ones is Inf/NaN (E5M2); False: only S.1111.111 NaN

    @property
    def min_normal_exp(self) -> int:
        return 1 - self.bias

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.min_normal_exp - self.man_bits)


E4M3 = FP8Format("e4m3", exp_bits=4, man_bits=3, bias=7, max_value=448.0,
                 ieee_specials=False)
E5M2 = FP8Format("e5m2", exp_bits=5, man_bits=2, bias=15, max_value=57344.0,
                 ieee_specials=True)
FORMATS = {"e4m3": E4M3, "e5m2": E5M2}


def _fmt(fmt: FP8Format | str) -> FP8Format:
    if isinstance(fmt, FP8Format):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown FP8 format {fmt!r}; choose from {sorted(FORMATS)}")
    return FORMATS[fmt]


def round_to_fp8(x: torch.Tensor, fmt: FP8Format | str = E4M3) -> torch.Tensor:
    """Round fp32 values to the nearest FP8 value (ties to even), saturating at +-max.

    Returns fp32 values that are exactly representable in ``fmt``. NaN stays NaN.
    """
    fmt = _fmt(fmt)
    x = x.float().clamp(-fmt.max_value, fmt.max_value)
    # frexp: |x| = mant * 2^e with mant in [0.5, 1), so the binade exponent k = e - 1.
    _, e = torch.frexp(x)
    k = (e - 1).clamp(min=fmt.min_normal_exp)  # subnormals share the smallest step
    step = torch.ldexp(torch.ones_like(x), k - fmt.man_bits)
    # torch.round is round-half-to-even, the IEEE default; dividing by a power of two
    # is exact, so this rounds x itself, not an approximation of it.
    y = torch.round(x / step) * step
    # Rounding up can cross max (e.g. 460 -> 480 in E4M3): saturate once more.
    return y.clamp(-fmt.max_value, fmt.max_value)


def decode_table(fmt: FP8Format | str = E4M3) -> torch.Tensor:
    """The value of every byte 0..255 as fp32 (256,), NaN/Inf where the format has them."""
    fmt = _fmt(fmt)
    b = torch.arange(256)
    sign = torch.where(b >= 128, -1.0, 1.0)
    e = (b >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
    m = (b & ((1 << fmt.man_bits) - 1)).float()
    frac = torch.where(e > 0, 1 + m / 2**fmt.man_bits, m / 2**fmt.man_bits)
    exp = torch.where(e > 0, e - fmt.bias, torch.full_like(e, fmt.min_normal_exp))
    val = sign * torch.ldexp(frac, exp)
    e_max = (1 << fmt.exp_bits) - 1
    if fmt.ieee_specials:
        val = torch.where((e == e_max) & (m == 0), sign * torch.inf, val)
        val = torch.where((e == e_max) & (m > 0), torch.nan, val)
    else:
        val = torch.where((b & 0x7F) == 0x7F, torch.nan, val)
    return val


def encode_fp8(x: torch.Tensor, fmt: FP8Format | str = E4M3) -> torch.Tensor:
    """fp32 -> FP8 bit patterns (uint8, same shape): round, saturate, then pack the bits."""
    fmt = _fmt(fmt)
    check_finite(x, "input")
    y = round_to_fp8(x, fmt)
    sign = torch.signbit(y).to(torch.int32) << 7  # keeps -0.0 distinct from +0.0
    a = y.abs()
    _, e = torch.frexp(a)
    normal = a >= 2.0 ** fmt.min_normal_exp
    e_field = torch.where(normal, e - 1 + fmt.bias, torch.zeros_like(e))
    # Mantissa bits: the value in units of the binade's step, minus the implicit 1.
    k = torch.where(normal, e - 1, torch.full_like(e, fmt.min_normal_exp))
    units = torch.ldexp(a, fmt.man_bits - k).to(torch.int32)  # exact: a is on the grid
    m_field = torch.where(normal, units - (1 << fmt.man_bits), units)
    bits = sign | (e_field << fmt.man_bits) | m_field
    return bits.to(torch.uint8)


def decode_fp8(bits: torch.Tensor, fmt: FP8Format | str = E4M3) -> torch.Tensor:
    """FP8 bit patterns (uint8) -> fp32 values, by a 256-entry table lookup."""
    if bits.dtype != torch.uint8:
        raise TypeError(f"decode_fp8 expects uint8 bit patterns, got {bits.dtype}")
    return decode_table(fmt)[bits.long()]


@dataclass(frozen=True)
class FP8Tensor:
    data: torch.Tensor  # same shape as the weight, uint8 FP8 bit patterns
    scale: torch.Tensor  # () fp32: w ~ scale * fp8
    fmt: FP8Format

    def nbytes(self) -> int:
        return self.data.numel() + self.scale.numel() * self.scale.element_size()

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes() / self.data.numel()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8(self, dtype)


def quantize_fp8(w: torch.Tensor, fmt: FP8Format | str = E4M3) -> FP8Tensor:
    """Per-tensor scaling so that max|w| lands on the format's max, then FP8 rounding."""
    fmt = _fmt(fmt)
    check_finite(w)
    w = w.detach().float()
    amax = w.abs().max() if w.numel() else torch.tensor(0.0)
    scale = torch.where(amax > 0, amax / fmt.max_value, torch.ones(()))  # ()
    return FP8Tensor(encode_fp8(w / scale, fmt), scale, fmt)


def dequantize_fp8(t: FP8Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (decode_fp8(t.data, t.fmt) * t.scale).to(dtype)


def fp8_bits_per_weight(n_weights: int) -> float:
    """8 bits per weight plus one fp32 scale for the whole tensor."""
    return 8 + 32 / n_weights


class FP8Linear(nn.Module):
    """Linear layer with an FP8 (bit-pattern) weight and a per-tensor scale;
    forward dequantizes to the activation dtype, then matmuls."""

    def __init__(self, t: FP8Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = t.data.shape
        self.fmt = t.fmt
        self.register_buffer("data", t.data)
        self.register_buffer("scale", t.scale)
        # Built once: the lookup table is tiny and saves rebuilding it every forward.
        self.register_buffer("table", decode_table(t.fmt), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: FP8Format | str = E4M3) -> FP8Linear:
        return cls(quantize_fp8(linear.weight, fmt), linear.bias)

    @property
    def bits_per_weight(self) -> float:
        return FP8Tensor(self.data, self.scale, self.fmt).bits_per_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.table[self.data.long()] * self.scale).to(x.dtype)  # (out, in)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fmt={self.fmt.name}")
