"""int8 weight-only linear layer: round-to-nearest absmax quantization per output channel
(the "vector-wise" baseline of Dettmers et al. 2022, LLM.int8(); gpt-fast's
``WeightOnlyInt8QuantHandler``).

Each weight row is stored as 8-bit codes q plus a scale s (per output channel, or per
group of input columns), so  W ~ s * (q - z)  and  y = x W^T + b ~ x (s * (q - z))^T + b.
Activations stay in floating point: the saving is in the bytes of weights read per
token, which is what bounds decoding speed on most hardware (8 + 16/in_features bits per
weight instead of 16 or 32).

Storage, dequantization and forward are shared with int4 (:mod:`.linear`).
"""

from __future__ import annotations

import torch

from .linear import WeightOnlyLinear


class Int8Linear(WeightOnlyLinear):
    """A drop-in nn.Linear replacement holding int8 codes and fp16 scales as buffers."""

    bits = 8

    def _code_buffer(self, out_features: int, in_features: int) -> torch.Tensor:
        dtype = torch.int8 if self.symmetric else torch.uint8  # codes -127..127 or 0..255
        return torch.zeros(out_features, in_features, dtype=dtype)  # (out, in)

    def _store_codes(self, q: torch.Tensor) -> None:
        self.qweight.copy_(q)

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.qweight if rows is None else self.qweight[rows]
