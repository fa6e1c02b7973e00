"""What every weight-only quantized linear layer shares: codes + scales in, fp out.

A layer stores integer codes q (packed or not), a scale s and, when asymmetric, a zero
point z per row (or group of input columns, or the whole tensor), so that
W ~ s * (q - z). ``forward`` dequantizes W and calls F.linear: the readable reference,
one extra pass over the weights per call. A fused kernel would dequantize inside the
matmul (or, for per-channel scales, scale the output: y = (x q^T) * s, exact).

Subclasses (:class:`~.int8.Int8Linear`, :class:`~.int4.Int4Linear`) say how codes are
stored: :meth:`_code_buffer` allocates them, :meth:`_store_codes` writes them and
:meth:`codes` reads them back unpacked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import Granularity, dequantize_codes, quantize


class WeightOnlyLinear(nn.Module):
    """Base of the drop-in nn.Linear replacements with quantized weights."""

    bits: int
    is_quantized = True  # marker that quantize_model uses to refuse double quantization

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: Granularity = "channel", group_size: int | None = None,
                 symmetric: bool = True, scale_dtype: torch.dtype = torch.float16):
        super().__init__()
        if granularity != "group":
            group_size = None
        elif not group_size or in_features % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features "
                             f"{in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.granularity, self.group_size, self.symmetric = granularity, group_size, symmetric
        n_groups = in_features // group_size if granularity == "group" else 1
        rows = 1 if granularity == "tensor" else out_features
        self.register_buffer("qweight", self._code_buffer(out_features, in_features))
        self.register_buffer("scale", torch.ones(rows, n_groups, dtype=scale_dtype))
        self.register_buffer("zero", None if symmetric else
                             torch.zeros(rows, n_groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    # -- how the codes are stored (the subclasses) ----------------------------------------
    def _code_buffer(self, out_features: int, in_features: int) -> torch.Tensor:
        raise NotImplementedError

    def _store_codes(self, q: torch.Tensor) -> None:
        """Write codes q (out, in), as :func:`~.primitives.quantize` returns them."""
        raise NotImplementedError

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The codes (out, in), unpacked: signed when symmetric, else unsigned; only the
        rows indexed by ``rows`` when given (unpacking just those)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "channel",
                    group_size: int | None = None, symmetric: bool = True,
                    scale_dtype: torch.dtype = torch.float16) -> WeightOnlyLinear:
        """Round-to-nearest quantization of ``linear``'s weight (bias kept in fp)."""
        if granularity != "group":
            group_size = None
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                granularity, group_size, symmetric, scale_dtype)
        qt = quantize(linear.weight, cls.bits, granularity, group_size, symmetric, scale_dtype)
        m._store_codes(qt.q)
        m.scale.copy_(qt.scale)
        if qt.zero is not None:
            m.zero.copy_(qt.zero)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone())
        return m.to(linear.weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.codes(), self.scale, self.zero, self.granularity,
                                self.group_size, dtype)  # (out, in)

    def dequantized_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor:
        """Rows ``rows`` of the dequantized weight (R, in): what an embedding lookup reads.
        Rows are independent at every granularity (per tensor, the one scale is shared)."""
        per_row = self.granularity != "tensor"
        scale = self.scale[rows] if per_row else self.scale  # (R or 1, n_groups)
        zero = None if self.zero is None else self.zero[rows] if per_row else self.zero
        return dequantize_codes(self.codes(rows), scale, zero, self.granularity,
                                self.group_size, dtype)  # (R, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        g = f"group_size={self.group_size}" if self.granularity == "group" else self.granularity
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"{self.in_features}, {self.out_features}, int{self.bits} {kind}, {g}"
