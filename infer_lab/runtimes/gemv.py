"""Batch-1 decode's matrix products written as reductions, for the compiler to fuse.

Decoding one token multiplies a row vector by every weight matrix: a GEMV, which reads
each weight once and does one multiply-add with it. Its speed is how fast the weights
stream from memory. A GEMM library tuned for big matrices does not stream them at that
speed: on this project's 2-core CPU, MKL's ``sgemm`` at M = 1 reads a cold 256 x 704 fp32
weight at 6-8 GB/s, while a plain read of memory runs at 25-34 GB/s.

Written as ``(x[..., None, :] * W).sum(-1)``, the same product is an elementwise multiply
and a row sum. Eagerly that would build the (N, K) product in memory: never run it so.
Compiled, inductor fuses the two into one vectorized loop per output row that reads W
once, split over the threads (measured here on the same cold weights: 13-22 GB/s, 1.3-3.4x
MKL). That is what :class:`ReductionLinear` does inside a compiled graph; outside one it
is an ordinary ``F.linear``, so an eager fallback is not slowed down.

Only at batch 1 (one token of one row): with M rows a GEMM reuses each weight M times from
cache, which a per-row reduction does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery import set_module, shared_copy


class ReductionLinear(nn.Module):
    """An ``nn.Linear`` whose one-token product is a reduction when compiled (the same
    weight and bias tensors, shared, not copied)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # (N, K), shared with the source (tied heads stay tied)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() or x.shape[:-1].numel() != 1:
            return F.linear(x, self.weight, self.bias)
        y = (x[..., None, :] * self.weight).sum(-1)  # (..., 1, K) * (N, K) -> (..., N)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}"


def reduction_linears(model: nn.Module) -> nn.Module:
    """A shared copy of ``model`` with every ``nn.Linear`` (the tied head too) a
    :class:`ReductionLinear`: for a compiled batch-1 decode step on a CPU."""
    copy = shared_copy(model)
    for name, mod in list(copy.named_modules()):
        if type(mod) is nn.Linear:
            set_module(copy, name, ReductionLinear(mod))
    return copy
