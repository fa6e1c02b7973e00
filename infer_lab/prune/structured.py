"""Structured pruning: remove whole MLP neurons, attention heads or layers, so the
matrices (and the matmuls) genuinely shrink, on any hardware.

* MLP width (as in LLM-Pruner, Ma et al. 2023, and Minitron, Muralidharan et al. 2024):
  SwiGLU(x) = W2 (silu(W1 x) * W3 x); neuron j is row j of W1 and W3 and column j of
  W2. Removing it removes 3d of the 3 d d_ff weights, and the output changes by
  exactly that neuron's contribution W2[:, j] a_j.
* Attention heads (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").
  With grouped-query attention a KV head serves n_head / n_kv_head query heads, so we
  either remove whole KV groups (K, V and their query heads: the KV cache shrinks too)
  or the same number of query heads from every group (the GQA layout stays valid).
* Whole layers (ShortGPT, Men et al. 2024): the residual stream lets a block be skipped.

Every layer keeps the same width, so one config describes the model and the usual
forward, ``generate`` and KV cache run on it. The new config is built with
``dataclasses.replace`` and is all there is to know: fewer heads of the same size show
as ``n_head * head_dim < d_model``. Which units go is decided by the scores
of :mod:`infer_lab.prune.importance` (lowest first, per layer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from .importance import NeuronScore, Score, head_scores, layer_scores, mlp_scores

# remove(w1 (d_ff, d), w3 (d_ff, d), w2 (d, d_ff), drop (k,)) -> the three smaller weights
RemoveFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                    tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1) (the share removed), got {fraction}")


def _sub_linear(lin: nn.Linear, rows: torch.Tensor | None = None,
                cols: torch.Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding only the given output rows / input columns of ``lin``."""
    w = lin.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Per row of (L, N) scores, the indices of the n_keep highest, in ascending order."""
    return scores.topk(n_keep, dim=-1).indices.sort(dim=-1).values  # (L, n_keep)


# -- MLP neurons ------------------------------------------------------------------------------
def remove_neurons(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                   drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SwiGLU W2 (silu(W1 x) * W3 x) without neurons ``drop``: rows of W1, W3, columns of W2."""
    keep = torch.ones(w1.shape[0], dtype=torch.bool, device=w1.device)
    keep[drop] = False  # (d_ff,) the kept neurons, in their order
    return w1[keep], w3[keep], w2[:, keep]


def _linear_from(weight: torch.Tensor, like: nn.Linear) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=False,
                    device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


def _shrink_with(m: nn.Module, idx: torch.Tensor, remove: RemoveFn) -> None:
    """Replace MLP ``m``'s linears by ``remove``'s smaller weights (the others dropped)."""
    if m.w3 is None or m.w1.bias is not None:
        raise ValueError("a remove function shrinks a bias-free SwiGLU MLP (w1, w3, w2)")
    d_ff, n_keep = m.w1.out_features, len(idx)
    drop = torch.ones(d_ff, dtype=torch.bool)
    drop[idx.cpu()] = False
    with torch.no_grad():
        w1, w3, w2 = remove(m.w1.weight.detach(), m.w3.weight.detach(), m.w2.weight.detach(),
                            drop.nonzero().flatten().to(m.w1.weight.device))
    d = m.w1.in_features
    if tuple(w1.shape) != (n_keep, d) or tuple(w3.shape) != (n_keep, d) or \
            tuple(w2.shape) != (d, n_keep):
        raise ValueError(f"remove returned weights {tuple(w1.shape)}, {tuple(w3.shape)}, "
                         f"{tuple(w2.shape)}; expected ({n_keep}, {d}) twice and ({d}, {n_keep})")
    m.w1, m.w3, m.w2 = _linear_from(w1, m.w1), _linear_from(w3, m.w3), _linear_from(w2, m.w2)


def shrink_mlp(model: nn.Module, keep: torch.Tensor, remove: RemoveFn | None = None
               ) -> nn.Module:
    """A copy of ``model`` whose layer l keeps MLP neurons ``keep[l]`` (L, d_ff') only.

    remove(w1, w3, w2, drop): how the neurons are cut out (default: kept rows / columns
    indexed; lab 03 passes the learner's :func:`remove_neurons`)."""
    new = copy.deepcopy(model)
    for block, idx in zip(new.layers, keep):
        m = block.mlp
        idx = idx.to(m.w1.weight.device)
        if remove is not None:
            _shrink_with(m, idx, remove)
            continue
        m.w1 = _sub_linear(m.w1, rows=idx)  # (d_ff', d)
        if m.w3 is not None:
            m.w3 = _sub_linear(m.w3, rows=idx)  # (d_ff', d)
        m.w2 = _sub_linear(m.w2, cols=idx)  # (d, d_ff')
    new.config = replace(model.config, d_ff=int(keep.shape[1]))
    return new


def prune_mlp(model: nn.Module, fraction: float, score: Score | NeuronScore = "activation",
              calib_ids=None, multiple_of: int = 1, remove: RemoveFn | None = None) -> nn.Module:
    """A new model with ``fraction`` of every layer's MLP neurons removed (lowest score).

    multiple_of: round the kept width up to a multiple of this (8 or 64 suits SIMD and
    tensor-core tile sizes; 1 keeps the fraction exact). The original is unchanged.
    score: a name or a function (:func:`~infer_lab.prune.importance.mlp_scores`);
    remove: how neurons are cut out (:func:`shrink_mlp`).
    """
    _check_fraction(fraction)
    d_ff = model.config.d_ff
    n_keep = min(d_ff, -(-(d_ff - round(fraction * d_ff)) // multiple_of) * multiple_of)
    scores = mlp_scores(model, score, calib_ids)  # (L, d_ff)
    return shrink_mlp(model, keep_top(scores, n_keep), remove)


# -- attention heads ----------------------------------------------------------------------------
def _rows(heads: torch.Tensor, D: int) -> torch.Tensor:
    """Row (or column) indices of the given heads in a (n * D, ...) matrix."""
    return (heads[:, None] * D + torch.arange(D)).flatten()


def shrink_heads(model: nn.Module, keep_q: torch.Tensor, keep_kv: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose layer l keeps query heads ``keep_q[l]`` and KV heads
    ``keep_kv[l]`` (each KV head's surviving query heads listed together, in order)."""
    new = copy.deepcopy(model)
    for block, q_idx, kv_idx in zip(new.layers, keep_q, keep_kv):
        a = block.attn
        D, Hkv = a.head_dim, a.n_kv_head
        rows = torch.cat([_rows(q_idx, D), a.n_head * D + _rows(kv_idx, D),
                          a.n_head * D + Hkv * D + _rows(kv_idx, D)])
        # The model's Attention sizes q from its own n_head * head_dim: swap the two
        # linears for their kept rows / columns and set the head counts.
        a.wqkv, a.wo = _sub_linear(a.wqkv, rows=rows), _sub_linear(a.wo, cols=_rows(q_idx, D))
        a.n_head, a.n_kv_head = len(q_idx), len(kv_idx)
    # Fewer heads of the same size: the config keeps head_dim explicitly (replace passes
    # it on, so __post_init__ does not re-derive it from d_model / n_head).
    new.config = replace(model.config, n_head=int(keep_q.shape[1]),
                         n_kv_head=int(keep_kv.shape[1]), head_dim=D)
    return new


def heads_pruned(config) -> bool:
    """Whether a config describes a head-pruned model: its heads no longer fill d_model
    (an unpruned model has n_head * head_dim == d_model, which loading checks)."""
    return config.n_head * config.head_dim < config.d_model


def prune_heads(model: nn.Module, fraction: float, score: Score = "activation",
                calib_ids=None, unit: str | None = None) -> nn.Module:
    """A new model with ``fraction`` of the attention heads of every layer removed.

    unit: "kv_group" removes whole KV groups (K, V and the query heads that share them,
    so the KV cache shrinks by the same fraction); "query" removes the same number of
    query heads from every group, KV heads kept. Default: "query" with GQA, "kv_group"
    with multi-head attention (where every head is its own group).
    """
    _check_fraction(fraction)
    if heads_pruned(model.config):
        raise ValueError("heads are already pruned; prune the original model")
    cfg = model.config
    rep = cfg.n_head // cfg.n_kv_head
    unit = unit or ("query" if rep > 1 else "kv_group")
    if unit == "kv_group":
        n_keep = cfg.n_kv_head - round(fraction * cfg.n_kv_head)
        if n_keep < 1 or n_keep == cfg.n_kv_head and fraction > 0:
            raise ValueError(f"fraction={fraction} of {cfg.n_kv_head} KV groups rounds to "
                             f"{cfg.n_kv_head - n_keep} removed; choose another fraction")
        keep_kv = keep_top(head_scores(model, score, calib_ids, "kv_group"), n_keep)
        keep_q = (keep_kv[..., None] * rep + torch.arange(rep)).flatten(1)  # (L, n_keep*rep)
        return shrink_heads(model, keep_q, keep_kv)
    n_keep = rep - round(fraction * rep)
    if n_keep < 1 or n_keep == rep and fraction > 0:
        raise ValueError(f"fraction={fraction} of the {rep} query heads per KV group rounds to "
                         f"{rep - n_keep} removed; choose another fraction or unit='kv_group'")
    s = head_scores(model, score, calib_ids, "query")  # (L, H)
    L = s.shape[0]
    within = keep_top(s.view(L, cfg.n_kv_head, rep), n_keep)  # (L, Hkv, n_keep)
    keep_q = (torch.arange(cfg.n_kv_head)[None, :, None] * rep + within).flatten(1)
    return shrink_heads(model, keep_q, torch.arange(cfg.n_kv_head).expand(L, -1))


# -- whole layers ----------------------------------------------------------------------------
def drop_layers(model: nn.Module, n_or_indices: int | list[int], score: Score = "activation",
                calib_ids=None) -> nn.Module:
    """A new model without some blocks: the ``n`` of lowest score, or the given indices."""
    L = model.config.n_layer
    if isinstance(n_or_indices, int):
        if not 0 <= n_or_indices < L:
            raise ValueError(f"can drop 0 to {L - 1} of {L} layers, not {n_or_indices}")
        scores = layer_scores(model, score, calib_ids)
        drop = set(scores.argsort()[:n_or_indices].tolist())
    else:
        drop = set(n_or_indices)
        if not drop <= set(range(L)) or len(drop) >= L:
            raise ValueError(f"indices must be distinct layers of 0..{L - 1}, keeping at least one")
    new = copy.deepcopy(model)
    kept = [b for i, b in enumerate(new.layers) if i not in drop]
    for i, b in enumerate(kept):
        b.attn.layer = i  # the KV cache is indexed by the block's new position
    new.layers = nn.ModuleList(kept)
    new.config = replace(model.config, n_layer=len(kept))
    return new


def n_params(model: nn.Module) -> int:
    """Parameters actually held (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
