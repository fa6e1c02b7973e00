"""int8 weight-only linear layer: round-to-nearest absmax quantization per output channel
(the "vector-wise" baseline of Dettmers et al. 2022, LLM.int8(); gpt-fast's
``WeightOnlyInt8QuantHandler``).

Each weight row is stored as 8-bit codes q plus a scale s (per output channel, or per
group of input columns), so  W ~ s * (q - z)  and  y = x W^T + b ~ x (s * (q - z))^T + b.
Activations stay in floating point: the saving is in the bytes of weights read per
token, which is what bounds decoding speed on most hardware (8 + 16/in_features bits per
weight instead of 16 or 32).

``forward`` dequantizes and then multiplies: the readable reference. A fused kernel
would instead scale the output, y = (x q^T) * s, which is exact for per-channel scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import Granularity, dequantize_codes, quantize


class Int8Linear(nn.Module):
    """A drop-in nn.Linear replacement holding int8 codes and fp16 scales as buffers."""

    bits = 8
    is_quantized = True  # marker that quantize_model uses to refuse double quantization

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 granularity: Granularity = "channel", group_size: int | None = None,
                 symmetric: bool = True, scale_dtype: torch.dtype = torch.float16):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.granularity, self.group_size, self.symmetric = granularity, group_size, symmetric
        if granularity == "group" and (not group_size or in_features % group_size):
            raise ValueError(f"group_size {group_size} does not divide in_features "
                             f"{in_features}")
        n_groups = in_features // group_size if granularity == "group" else 1
        rows = 1 if granularity == "tensor" else out_features
        code_dtype = torch.int8 if symmetric else torch.uint8
        self.register_buffer("qweight", torch.zeros(out_features, in_features,
                                                    dtype=code_dtype))  # (out, in)
        self.register_buffer("scale", torch.ones(rows, n_groups, dtype=scale_dtype))
        self.register_buffer("zero", None if symmetric else
                             torch.zeros(rows, n_groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, granularity: Granularity = "channel",
                    group_size: int | None = None, symmetric: bool = True,
                    scale_dtype: torch.dtype = torch.float16) -> Int8Linear:
        qt = quantize(linear.weight, 8, granularity, group_size, symmetric, scale_dtype)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None,
                granularity, group_size, symmetric, scale_dtype)
        m.qweight.copy_(qt.q)
        m.scale.copy_(qt.scale)
        if qt.zero is not None:
            m.zero.copy_(qt.zero)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone())
        return m.to(linear.weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.qweight, self.scale, self.zero, self.granularity,
                                self.group_size, dtype)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        g = f"group_size={self.group_size}" if self.granularity == "group" else self.granularity
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"{self.in_features}, {self.out_features}, int8 {kind}, {g}"
