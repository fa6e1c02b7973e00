"""Kernels plugged into a model from outside: ``use_kernels(model)``.

The model's code is not touched (DESIGN: optimizations plug in from outside). Each module a
kernel replaces is swapped for a thin wrapper that keeps the same parameters and calls the
kernel's dispatcher, so a CUDA model runs the Triton kernels, a CPU model runs the PyTorch
references (or the kernels under ``TRITON_INTERPRET=1``), and greedy tokens are the same
either way (tests/test_kernels_plug.py):

    RMSNorm                 -> :func:`.rmsnorm.rmsnorm` (fused with its weight)
    gated MLP (SwiGLU)      -> w2(:func:`.swiglu.swiglu`(w1 x, w3 x))
    Int8Linear / Int4Linear -> :func:`.quant_gemv.int8_linear` / ``int4_linear``
    Attention               -> the same projections; softmax(q K^T) V by
                               :func:`.flash_attention.flash_attention`, reached through
                               the cache contract (:class:`FlashAttentionView`)

Attention keeps the model's code and the cache's storage: :class:`KernelAttention` hands
the layer a view of whatever cache the forward uses, and the view stores K/V through that
cache but computes attention with the flash kernel, its mask from the positions the cache
recorded. Caches whose reads are their own business (a sliding-window ring, the serving
engine's paged pool, which has its own paged-attention kernel:
``EngineConfig(decode_attention=...)``) keep their own ``attend``.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import nn

from ..kv_cache import KVCache, NoCache, Step
from ..model import MLP, Attention, RMSNorm
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


class FlashAttentionView:
    """The cache contract over ``cache``, with attention by the flash-attention kernel.

    ``begin`` is the cache's own; ``attend`` stores k, v through the cache and attends q
    over everything it holds with :func:`.flash_attention.flash_attention`, whose mask
    comes from positions (query position >= key position >= 0), exactly the rule of
    :func:`infer_lab.kv_cache.attention_mask`. A cache it cannot read that way (a window
    ring, a paged pool) attends as it always does.
    """

    def __init__(self, cache):
        self.cache = cache

    def begin(self, T: int, pos: torch.Tensor | None) -> Step:
        return self.cache.begin(T, pos)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        from .flash_attention import flash_attention

        cache = self.cache
        if isinstance(cache, NoCache):  # a forward without memory: its own tokens
            return flash_attention(q, k, v, step.pos, step.pos)
        if isinstance(cache, KVCache) and cache.window is None:
            k_all, v_all = cache.update(layer, k, v, step)  # (B, H_kv, S, D), any storage
            # begin() recorded this forward's positions: slots 0..S-1 hold the keys' own.
            k_pos = cache.kpos[:, :k_all.shape[2]]  # (B, S), -1 = padding
            return flash_attention(q, k_all, v_all, step.pos, k_pos)
        return cache.attend(layer, q, k, v, step)


class KernelAttention(Attention):
    """An attention layer (same projections, same parameter names) that attends through
    :class:`FlashAttentionView` of the forward's cache."""

    def __init__(self, attn: Attention):
        nn.Module.__init__(self)
        self.layer, self.n_head = attn.layer, attn.n_head
        self.n_kv_head, self.head_dim = attn.n_kv_head, attn.head_dim
        self.wqkv, self.wo = attn.wqkv, attn.wo

    def forward(self, x: torch.Tensor, rope, cache, step: Step) -> torch.Tensor:
        return super().forward(x, rope, FlashAttentionView(cache), step)


def flash_supported(attn: Attention) -> str | None:
    """None when the flash kernel takes this layer's heads, else why not."""
    from .flash_attention import head_dim_error

    return head_dim_error(attn.head_dim)


def _wrapper(module: nn.Module) -> nn.Module | None:
    from ..quant.int4 import Int4Linear
    from ..quant.int8 import Int8Linear

    if isinstance(module, RMSNorm):
        return KernelRMSNorm(module)
    if isinstance(module, MLP) and module.gated:
        return KernelSwiGLU(module)
    if isinstance(module, (Int8Linear, Int4Linear)):
        return KernelQuantLinear(module)
    if type(module) is Attention and flash_supported(module) is None:
        return KernelAttention(module)
    return None


def use_kernels(model: nn.Module) -> Counter:
    """Swap every module a kernel replaces, in place; returns how many of each kind.

    Attention whose head_dim the flash kernel cannot tile keeps PyTorch's SDPA, with a
    warning that says why (the Counter then has no ``KernelAttention``).
    """
    swaps = [(name, new) for name, m in model.named_modules() if name
             for new in [_wrapper(m)] if new is not None]
    for name, new in swaps:
        set_module(model, name, new)
    kept = {why for m in model.modules() if type(m) is Attention
            for why in [flash_supported(m)] if why}
    if kept:
        warnings.warn(f"attention stays on PyTorch's SDPA: {'; '.join(sorted(kept))}",
                      stacklevel=2)
    return Counter(type(new).__name__ for _, new in swaps)
