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

from collections.abc import Callable

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


MaskFn = Callable[[torch.Tensor, float], torch.Tensor]  # (weights, sparsity) -> bool keep-mask


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask of ``w``'s shape: False on the round(sparsity * numel) smallest |w|."""
    return _keep_largest(w.detach().abs().flatten(), round(sparsity * w.numel())).view_as(w)


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global",
                    mask_fn: MaskFn | None = None) -> dict[str, torch.Tensor]:
    """{linear name: bool mask (out, in)}, True = kept, pruning ``sparsity`` of the weights.

    The count removed is round(sparsity * n): over all prunable weights (global) or in
    each layer (layer), so the sparsity is exact up to that rounding.
    mask_fn(w, sparsity): the mask rule (default :func:`magnitude_mask`); global scope
    hands it every prunable weight as one flat tensor, layer scope one matrix at a time
    (lab 03 passes the learner's).
    """
    _check_sparsity(sparsity)
    if mask_fn is not None:
        return _masks_from(model, sparsity, scope, mask_fn)
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


def _masks_from(model: nn.Module, sparsity: float, scope: str,
                mask_fn: MaskFn) -> dict[str, torch.Tensor]:
    """magnitude_masks with a given mask rule, its masks checked (shape, bool)."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    lins = prunable_linears(model)
    if scope == "layer":
        ws = {n: m.weight.detach() for n, m in lins.items()}
        masks = {n: mask_fn(w, sparsity) for n, w in ws.items()}
    else:
        flat = torch.cat([m.weight.detach().float().flatten() for m in lins.values()])
        keep = mask_fn(flat, sparsity)  # (n_total,) one ranking over every layer
        ws = {"all prunable weights": flat}
        masks = {"all prunable weights": keep}
    for n, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != ws[n].shape:
            raise ValueError(f"mask_fn must return a bool tensor of the weights' shape "
                             f"{tuple(ws[n].shape)} for {n}, got {m!r:.80}")
    if scope == "layer":
        return masks
    out, start = {}, 0
    for n, lin in lins.items():
        out[n] = keep[start:start + lin.weight.numel()].view_as(lin.weight)
        start += lin.weight.numel()
    return out


def prune_magnitude(model: nn.Module, sparsity: float, scope: str = "global",
                    mask_fn: MaskFn | None = None) -> nn.Module:
    """Magnitude-prune ``model`` in place (deepcopy first to keep the dense one); return it.

    mask_fn: the mask rule, as in :func:`magnitude_masks`."""
    apply_masks(model, magnitude_masks(model, sparsity, scope, mask_fn))
    return model


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable linear layers."""
    linears = prunable_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    return zeros / max(1, sum(m.weight.numel() for m in linears.values()))


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Per prunable layer, its fraction of zero weights (global pruning is uneven)."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable_linears(model).items()}
