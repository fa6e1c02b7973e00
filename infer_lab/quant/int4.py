"""int4 weight-only linear layer with group-wise scales (as in GPTQ/AWQ checkpoints and
gpt-fast's ``WeightOnlyInt4QuantHandler``; Frantar et al. 2022, Lin et al. 2023 use the
same storage with smarter rounding).

Sixteen levels are too few for a whole row, so each group of ``group_size`` input
columns (64 or 128 typically) gets its own scale (and zero point):
W[r, g*G:(g+1)*G] ~ s[r, g] * (q - z[r, g]). Codes are packed two per byte, so a weight
costs 4 + (16 + 4 if asymmetric) / group_size bits: 4.25 (symmetric, G = 64) or 4.31.

Symmetric codes live in -7..7 and are stored with an offset of 8 (1..15), so that both
variants pack the same unsigned nibbles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import Granularity, dequantize_codes, pack_int4, quantize, unpack_int4

SYMMETRIC_OFFSET = 8  # signed code -7..7 -> unsigned nibble 1..15


class Int4Linear(nn.Module):
    """A drop-in nn.Linear replacement holding packed 4-bit codes and fp16 scales."""

    bits = 4
    is_quantized = True  # marker that quantize_model uses to refuse double quantization

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: Granularity = "group", group_size: int | None = 64,
                 symmetric: bool = True, scale_dtype: torch.dtype = torch.float16):
        super().__init__()
        if in_features % 2:
            raise ValueError(f"int4 packs two codes per byte: in_features must be even, "
                             f"got {in_features}")
        if granularity != "group":
            group_size = None
        elif group_size is None or in_features % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features "
                             f"{in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.granularity, self.group_size, self.symmetric = granularity, group_size, symmetric
        n_groups = in_features // group_size if granularity == "group" else 1
        rows = 1 if granularity == "tensor" else out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2,
                                                    dtype=torch.uint8))  # (out, in/2)
        self.register_buffer("scale", torch.ones(rows, n_groups, dtype=scale_dtype))
        self.register_buffer("zero", None if symmetric else
                             torch.zeros(rows, n_groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "group",
                    group_size: int | None = 64, symmetric: bool = True,
                    scale_dtype: torch.dtype = torch.float16) -> Int4Linear:
        if granularity != "group":
            group_size = None
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                granularity, group_size, symmetric, scale_dtype)
        qt = quantize(linear.weight, 4, granularity, group_size, symmetric, scale_dtype)
        codes = qt.q.to(torch.int16) + SYMMETRIC_OFFSET if symmetric else qt.q
        m.qweight.copy_(pack_int4(codes.to(torch.uint8)))
        m.scale.copy_(qt.scale)
        if qt.zero is not None:
            m.zero.copy_(qt.zero)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone())
        return m.to(linear.weight.device)

    def codes(self) -> torch.Tensor:
        """Unpacked codes (out, in): int8 in -7..7 (symmetric) or uint8 in 0..15."""
        q = unpack_int4(self.qweight)  # (out, in)
        return (q.to(torch.int8) - SYMMETRIC_OFFSET) if self.symmetric else q

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.codes(), self.scale, self.zero, self.granularity,
                                self.group_size, dtype)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        g = f"group_size={self.group_size}" if self.granularity == "group" else self.granularity
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"{self.in_features}, {self.out_features}, int4 {kind}, {g}"
