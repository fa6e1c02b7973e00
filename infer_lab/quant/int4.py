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

from .linear import WeightOnlyLinear
from .primitives import Granularity, pack_int4, unpack_int4

SYMMETRIC_OFFSET = 8  # signed code -7..7 -> unsigned nibble 1..15


class Int4Linear(WeightOnlyLinear):
    """A drop-in nn.Linear replacement holding packed 4-bit codes and fp16 scales."""

    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: Granularity = "group", group_size: int | None = 64,
                 symmetric: bool = True, scale_dtype: torch.dtype = torch.float16):
        if in_features % 2:
            raise ValueError(f"int4 packs two codes per byte: in_features must be even, "
                             f"got {in_features}")
        super().__init__(in_features, out_features, bias, granularity, group_size,
                         symmetric, scale_dtype)

    @classmethod
    def from_linear(cls, linear, granularity: Granularity = "group",
                    group_size: int | None = 64, symmetric: bool = True,
                    scale_dtype: torch.dtype = torch.float16) -> Int4Linear:
        return super().from_linear(linear, granularity, group_size, symmetric, scale_dtype)

    def _code_buffer(self, out_features: int, in_features: int) -> torch.Tensor:
        return torch.zeros(out_features, in_features // 2, dtype=torch.uint8)  # (out, in/2)

    def _store_codes(self, q: torch.Tensor) -> None:
        codes = q.to(torch.int16) + SYMMETRIC_OFFSET if self.symmetric else q
        self.qweight.copy_(pack_int4(codes.to(torch.uint8)))

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Unpacked codes (out, in): int8 in -7..7 (symmetric) or uint8 in 0..15."""
        q = unpack_int4(self.qweight if rows is None else self.qweight[rows])  # (R, in)
        return (q.to(torch.int8) - SYMMETRIC_OFFSET) if self.symmetric else q
