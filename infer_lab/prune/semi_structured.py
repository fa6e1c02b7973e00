"""2:4 semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural
Networks"; NVIDIA Ampere's sparse tensor cores).

In every group of 4 consecutive weights along a row of W (out, in), i.e. along the
input dimension the matmul sums over, keep the 2 of largest |w|: exactly 50% sparsity
in a pattern hardware can skip. The GPU stores the 2 kept values plus a 2-bit index
each, and the sparse tensor cores do half the multiply-adds: up to ~2x on the matmul,
nothing on a CPU, where PyTorch has no 2:4 kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .magnitude import apply_masks, prunable_linears


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Bool (out, in): True for the 2 largest-|w| weights of each group of 4 along a row."""
    if weight.dim() != 2:
        raise ValueError(f"2:4 masks are for 2-D weights (out, in), got {weight.dim()}-D")
    out, n_in = weight.shape
    if n_in % 4:
        raise ValueError(f"in_features={n_in} is not a multiple of 4: 2:4 groups cannot "
                         "tile the row")
    groups = weight.detach().abs().reshape(out, n_in // 4, 4)  # (out, in/4, 4)
    keep = groups.topk(2, dim=-1).indices  # (out, in/4, 2)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out, n_in)


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive weights along a row has at most 2 non-zeros."""
    out, n_in = weight.shape
    if n_in % 4:
        return False
    nonzero = (weight.reshape(out, n_in // 4, 4) != 0).sum(-1)  # (out, in/4)
    return bool((nonzero <= 2).all())


def masks_2_4(model: nn.Module,
              mask_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> dict[str, torch.Tensor]:
    """{name: 2:4 mask} for every prunable linear layer; mask_fn(w) -> bool mask is the
    rule (default :func:`mask_2_4`; lab 03 passes the learner's), its masks checked."""
    fn = mask_fn or mask_2_4
    masks = {}
    for n, m in prunable_linears(model).items():
        w = m.weight.detach()
        masks[n] = mask = fn(w)
        if mask_fn is not None and not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
                                        and mask.shape == w.shape and is_2_4(w * mask)):
            raise ValueError(f"mask_fn's mask for {n} is not a 2:4 bool mask of shape "
                             f"{tuple(w.shape)}")
    return masks


def prune_2_4(model: nn.Module,
              mask_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Apply 2:4 sparsity to every prunable linear, in place; returns the model."""
    apply_masks(model, masks_2_4(model, mask_fn))
    return model


def semi_structured_speedup(out_features: int = 4096, in_features: int = 4096,
                            tokens: int = 128, repeats: int = 50,
                            dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Time one linear layer dense vs 2:4 sparse (``to_sparse_semi_structured``) on CUDA.

    Returns {"measured": False, "reason": ...} without a GPU that has sparse tensor
    cores (compute capability 8.0+): there is no number to report on a CPU, and a
    CPU-side "speedup" of a masked dense matmul would be a fiction.
    """
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA GPU: 2:4 sparse kernels need NVIDIA "
                                             "sparse tensor cores (unmeasured on CPU)"}
    if torch.cuda.get_device_capability() < (8, 0):
        return {"measured": False, "reason": "2:4 sparse tensor cores need compute "
                                             "capability 8.0+ (Ampere or later)"}
    from torch.sparse import to_sparse_semi_structured

    w = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    w = w * mask_2_4(w)
    x = torch.randn(in_features, tokens, device="cuda", dtype=dtype)  # (in, tokens)
    try:
        ws = to_sparse_semi_structured(w)
    except (RuntimeError, NotImplementedError) as e:
        return {"measured": False, "reason": f"to_sparse_semi_structured failed: {e}"}

    def time_it(fn) -> float:
        for _ in range(5):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats / 1e3

    dense_s, sparse_s = time_it(lambda: w @ x), time_it(lambda: ws @ x)
    torch.testing.assert_close(ws @ x, w @ x, rtol=1e-2, atol=1e-1)
    return {"measured": True, "shape": (out_features, in_features, tokens),
            "dtype": str(dtype), "dense_s": dense_s, "sparse_s": sparse_s,
            "speedup": dense_s / sparse_s}
