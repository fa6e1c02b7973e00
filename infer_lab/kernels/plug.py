"""Kernels plugged into a model from outside: ``use_kernels(model)``.

The model's code is not touched (DESIGN: optimizations plug in from outside). Each module a
kernel replaces is swapped for a thin wrapper that keeps the same parameters and calls the
kernel's dispatcher, so a CUDA model runs the Triton kernels, a CPU model runs the PyTorch
references (or the kernels under ``TRITON_INTERPRET=1``), and greedy tokens are the same
either way (tests/test_kernels_plug.py):

    RMSNorm                 -> :func:`.rmsnorm.rmsnorm` (fused with its weight)
    gated MLP (SwiGLU)      -> w2(:func:`.swiglu.swiglu`(w1 x, w3 x))
    Int8Linear / Int4Linear -> :func:`.quant_gemv.int8_linear` / ``int4_linear``

Attention through flash attention and the serving engine's paged kernel are still to
plug in behind the cache contract (issue 15).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ..model import MLP, RMSNorm
from ..surgery import set_module


class KernelRMSNorm(nn.Module):
    """RMSNorm whose forward is the fused kernel; shares the original's weight."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .rmsnorm import rmsnorm

        return rmsnorm(x, self.weight, self.eps)


class KernelSwiGLU(nn.Module):
    """A gated MLP whose activation, silu(a) * b, is one fused kernel."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.w1, self.w2, self.w3 = mlp.w1, mlp.w2, mlp.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .swiglu import swiglu

        return self.w2(swiglu(self.w1(x), self.w3(x)))


class KernelQuantLinear(nn.Module):
    """An Int8Linear / Int4Linear whose forward dequantizes in registers (GEMV kernel)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .quant_gemv import int4_linear, int8_linear

        return (int8_linear if self.layer.bits == 8 else int4_linear)(x, self.layer)


def _wrapper(module: nn.Module) -> nn.Module | None:
    from ..quant.int4 import Int4Linear
    from ..quant.int8 import Int8Linear

    if isinstance(module, RMSNorm):
        return KernelRMSNorm(module)
    if isinstance(module, MLP) and module.gated:
        return KernelSwiGLU(module)
    if isinstance(module, (Int8Linear, Int4Linear)):
        return KernelQuantLinear(module)
    return None


def use_kernels(model: nn.Module) -> Counter:
    """Swap every module a kernel replaces, in place; returns how many of each kind."""
    swaps = [(name, new) for name, m in model.named_modules() if name
             for new in [_wrapper(m)] if new is not None]
    for name, new in swaps:
        set_module(model, name, new)
    return Counter(type(new).__name__ for _, new in swaps)
