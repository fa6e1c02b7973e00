"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections").

Remove the weights of smallest magnitude: mask_ij = [|w_ij| > tau], with tau chosen so
that a fraction ``s`` (the sparsity) of the weights is removed, either

* globally: one ranking over every prunable weight of the model, so layers with many
  small weights lose more of them, or
* per layer: each linear layer loses exactly the fraction ``s`` of its own weights.

Prunable = every ``nn.Linear`` except a ``lm_head`` tied to the token embedding (pruning
it would also prune the embedding): :func:`infer_lab.surgery.linears` with nothing
skipped by name, so an untied head is pruned like any other matrix. The matrices keep
their shape: zeros cost a dense matmul the same time as any other number, so this saves
no time by itself (it needs a sparse kernel or a sparse storage format to pay off).
"""

from __future__ import annotations

import torch
from torch import nn

from ..surgery import linears


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Name -> nn.Linear for every linear layer except tied ones (the zoo's lm_head)."""
    return linears(model, skip=())


def _check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed), "
                         f"got {sparsity}")


def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask over a flat tensor: False on exactly the n_prune smallest scores."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune:
        # argsort, not a threshold: ties at the threshold would miss the exact count.
        mask[scores.argsort(stable=True)[:n_prune]] = False
    return mask


def magnitude_masks(model: nn.Module, sparsity: float,
                    scope: str = "global") -> dict[str, torch.Tensor]:
    """{linear name: bool mask (out, in)}, True = kept, pruning ``sparsity`` of the weights.

    The count removed is round(sparsity * n): over all prunable weights (global) or in
    each layer (layer), so the sparsity is exact up to that rounding.
    """
    _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    linears = prunable_linears(model)
    if not linears:
        raise ValueError("the model has no prunable nn.Linear layers")
    if scope == "layer":
        return {n: _keep_largest(m.weight.detach().abs().flatten(),
                                 round(sparsity * m.weight.numel())).view_as(m.weight)
                for n, m in linears.items()}
    flat = torch.cat([m.weight.detach().abs().float().flatten() for m in linears.values()])
    keep = _keep_largest(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for n, m in linears.items():
        masks[n] = keep[start:start + m.weight.numel()].view_as(m.weight)
        start += m.weight.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero the masked-out weights in place; return the masks.

    Keep the masks: fine-tuning or distillation after pruning must re-apply them after
    every optimizer step (``distill(..., masks=masks)`` does), or the zeros regrow.
    """
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        if mask.shape != w.shape:
            raise ValueError(f"{name}: mask {tuple(mask.shape)} does not match the weight "
                             f"{tuple(w.shape)}")
        w.mul_(mask.to(w.device, w.dtype))
    return masks


def prune_magnitude(model: nn.Module, sparsity: float, scope: str = "global") -> nn.Module:
    """Magnitude-prune ``model`` in place (deepcopy first to keep the dense one); return it."""
    apply_masks(model, magnitude_masks(model, sparsity, scope))
    return model


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable linear layers."""
    linears = prunable_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    return zeros / max(1, sum(m.weight.numel() for m in linears.values()))


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Per prunable layer, its fraction of zero weights (global pruning is uneven)."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable_linears(model).items()}
