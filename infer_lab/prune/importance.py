"""Which MLP neurons, attention heads and layers matter? Importance scores for structured
pruning, three ways:

* ``"weight"``: weight norms, no data. A neuron j of the SwiGLU MLP scores
  ||W1[j]|| ||W3[j]|| ||W2[:, j]||; a head, ||Wq_h||_F ||Wo_h||_F; a layer, the norms of
  the matrices that write into the residual stream (Wo, W2).
* ``"activation"``: how much the unit actually outputs on calibration text, the
  mean |a_j| (per token) times the norm of the weights that carry it to the residual
  stream (as Wanda weighs |w| by ||x||, Sun et al. 2023). For a whole layer, the Block
  Influence of ShortGPT (Men et al. 2024): BI = 1 - mean cos(x_in, x_out), how much the
  block changes the residual stream.
* ``"gradient"``: the first-order Taylor estimate of the loss change when the unit is
  removed (Molchanov et al. 2019): I = |sum_{w in unit} w * dL/dw|, gradients of the
  next-token loss summed over the calibration batches.

A neuron score can also be a function ``score(w1, w3, w2, x) -> (d_ff,)`` of one layer's
MLP weights and its calibration inputs x (tokens, d_model): lab 03 passes the learner's.

Scores are per layer: (n_layer, d_ff) neurons, (n_layer, n_head) query heads,
(n_layer, n_kv_head) KV groups, (n_layer,) layers. Higher = more important.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Score = Literal["weight", "activation", "gradient"]
SCORES = ("weight", "activation", "gradient")
# score(w1 (d_ff, d), w3 (d_ff, d), w2 (d, d_ff), x (tokens, d)) -> (d_ff,): one layer
NeuronScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def calibration_batches(calib_ids, seq_len: int = 128, batch_size: int = 8) -> list[torch.Tensor]:
    """Calibration token ids as (B, T) batches: a 2-D tensor / list of equal-length rows,
    or a 1-D stream cut into windows of ``seq_len``."""
    if isinstance(calib_ids, torch.Tensor):
        ids = calib_ids.long()
    elif isinstance(calib_ids, np.ndarray):
        ids = torch.from_numpy(calib_ids.astype(np.int64))
    else:
        ids = torch.as_tensor([list(r) for r in calib_ids] if calib_ids and
                              isinstance(calib_ids[0], Sequence) else list(calib_ids))
    if ids.dim() == 1:
        n = len(ids) // seq_len
        if n == 0:
            raise ValueError(f"need at least {seq_len} calibration tokens, got {len(ids)}")
        ids = ids[:n * seq_len].view(n, seq_len)
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError("calib_ids must be a token stream or (N, T) token rows")
    return list(ids.split(batch_size))


def _need(score: str, calib_ids) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score != "weight" and calib_ids is None:
        raise ValueError(f"score={score!r} needs calib_ids (token ids of calibration text)")


def _head_slices(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head: Wq rows (H, D, d), Wo columns (H, d, D); per KV head: Wk, Wv rows (Hkv, D, d)."""
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    w = attn.wqkv.weight
    q, k, v = w.split([H * D, Hkv * D, Hkv * D], dim=0)
    wo = attn.wo.weight  # (d, H*D)
    return (q.view(H, D, -1), wo.view(wo.shape[0], H, D).transpose(0, 1),
            k.view(Hkv, D, -1), v.view(Hkv, D, -1))


def _run(model: nn.Module, calib_ids, grad: bool) -> None:
    """Forward the calibration batches (and backward the next-token loss when ``grad``)."""
    for x in calibration_batches(calib_ids):
        x = x.to(model.device)
        with torch.set_grad_enabled(grad):
            logits = model(x[:, :-1])  # (B, T-1, V)
            if grad:
                F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()


def _mean_input(model: nn.Module, calib_ids, modules: list[nn.Module],
                per_token) -> list[torch.Tensor]:
    """Mean over the calibration tokens of per_token(input) for each module's input,
    recorded with forward pre-hooks (the model code is untouched)."""
    sums: list[torch.Tensor | float] = [0.0] * len(modules)
    counts = [0] * len(modules)

    def hook(i):
        def pre(mod, args):
            v = per_token(args[0].detach().float()).flatten(0, -2)  # (tokens, units)
            sums[i] = sums[i] + v.sum(0).cpu()
            counts[i] += v.shape[0]
        return pre

    hooks = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        _run(model, calib_ids, grad=False)
    finally:
        for h in hooks:
            h.remove()
    return [s / c for s, c in zip(sums, counts)]


def _with_grads(model: nn.Module, calib_ids, fn):
    """fn() evaluated while every parameter holds dL/dw summed over the calibration set."""
    was_training, saved = model.training, [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    try:
        _run(model, calib_ids, grad=True)
        with torch.no_grad():
            return fn()
    finally:
        for p, g in zip(model.parameters(), saved):
            p.grad = g
        model.train(was_training)


def _taylor(*pairs: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
    """|sum w * g| per unit; each (w, g, dim) sums over every axis but ``dim``."""
    total = 0
    for w, g, dim in pairs:
        wg = (w * g).float().movedim(dim, 0)
        total = total + wg.flatten(1).sum(1)
    return total.abs()


def mlp_inputs(model: nn.Module, calib_ids) -> list[torch.Tensor]:
    """Per layer, every calibration token's input to the MLP, (tokens, d_model) in fp32."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.layers]
    hooks = [b.mlp.register_forward_pre_hook(
        lambda mod, args, i=i: seen[i].append(args[0].detach().float().flatten(0, -2).cpu()))
        for i, b in enumerate(model.layers)]
    try:
        _run(model, calib_ids, grad=False)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(xs) for xs in seen]


def _scores_from(model: nn.Module, score: NeuronScore, calib_ids) -> torch.Tensor:
    if calib_ids is None:
        raise ValueError("a score function needs calib_ids (token ids of calibration text)")
    out = []
    for b, x in zip(model.layers, mlp_inputs(model, calib_ids)):
        m = b.mlp
        if m.w3 is None:
            raise ValueError("a neuron score function scores a SwiGLU MLP (w1, w3, w2)")
        with torch.no_grad():
            s = score(*(lin.weight.detach().float().cpu() for lin in (m.w1, m.w3, m.w2)), x)
        if not isinstance(s, torch.Tensor) or s.shape != (m.w1.out_features,):
            raise ValueError(f"the score function must return ({m.w1.out_features},) scores, "
                             f"got {s!r:.80}")
        out.append(s.float())
    return torch.stack(out)


def mlp_scores(model: nn.Module, score: Score | NeuronScore = "activation",
               calib_ids=None) -> torch.Tensor:
    """Importance of every MLP neuron, (n_layer, d_ff). ``score``: a name of
    :data:`SCORES`, or a function of one layer's weights and calibration inputs."""
    if callable(score):
        return _scores_from(model, score, calib_ids)
    _need(score, calib_ids)
    mlps = [b.mlp for b in model.layers]
    if score == "weight":
        with torch.no_grad():
            return torch.stack([_mlp_weight_norms(m) for m in mlps])
    if score == "gradient":
        def taylor():
            out = []
            for m in mlps:
                pairs = [(m.w1.weight, m.w1.weight.grad, 0), (m.w2.weight, m.w2.weight.grad, 1)]
                if m.w3 is not None:
                    pairs.append((m.w3.weight, m.w3.weight.grad, 0))
                out.append(_taylor(*pairs))
            return torch.stack(out)
        return _with_grads(model, calib_ids, taylor)
    # |activation| of each neuron entering W2, (B, T, d_ff), averaged over tokens
    means = _mean_input(model, calib_ids, [m.w2 for m in mlps], torch.abs)
    with torch.no_grad():
        return torch.stack([mean * m.w2.weight.float().norm(dim=0).cpu()
                            for mean, m in zip(means, mlps)])


def _mlp_weight_norms(m: nn.Module) -> torch.Tensor:
    s = m.w1.weight.float().norm(dim=1) * m.w2.weight.float().norm(dim=0)
    return s * m.w3.weight.float().norm(dim=1) if m.w3 is not None else s


def head_scores(model: nn.Module, score: Score = "activation", calib_ids=None,
                unit: str = "query") -> torch.Tensor:
    """Importance of every query head (n_layer, n_head), or with ``unit="kv_group"`` of
    every KV group (n_layer, n_kv_head): its K/V head and the query heads sharing it."""
    _need(score, calib_ids)
    if unit not in ("query", "kv_group"):
        raise ValueError(f"unit must be 'query' or 'kv_group', got {unit!r}")
    attns = [b.attn for b in model.layers]
    if score == "weight":
        with torch.no_grad():
            per_head = [_head_weight_norms(a) for a in attns]
    elif score == "gradient":
        def taylor():
            out = []
            for a in attns:
                q, wo, k, v = _head_slices(a)
                gq, gwo, gk, gv = _grads_like(a)
                s = _taylor((q, gq, 0), (wo, gwo, 0))  # (H,)
                if unit == "kv_group":  # the group also loses its K and V heads
                    kv = _taylor((k, gk, 0), (v, gv, 0))  # (Hkv,)
                    s = _group(s, a) + kv
                out.append(s)
            return torch.stack(out)
        return _with_grads(model, calib_ids, taylor)
    else:
        per_head = _head_activations(model, attns, calib_ids)
    s = torch.stack(per_head)  # (L, H)
    if unit == "kv_group":
        s = torch.stack([_group(row, a) for row, a in zip(s, attns)])
    return s


def _grads_like(attn: nn.Module):
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = attn.wqkv.weight.grad.split([H * D, Hkv * D, Hkv * D], dim=0)
    wo = attn.wo.weight.grad
    return (q.view(H, D, -1), wo.view(wo.shape[0], H, D).transpose(0, 1),
            k.view(Hkv, D, -1), v.view(Hkv, D, -1))


def _group(per_head: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """(H,) -> (Hkv,): query head h belongs to KV group h // (H / Hkv) (SDPA's GQA order)."""
    return per_head.view(attn.n_kv_head, -1).sum(-1)


def _head_weight_norms(attn: nn.Module) -> torch.Tensor:
    q, wo, _, _ = _head_slices(attn)
    return q.float().flatten(1).norm(dim=1) * wo.float().flatten(1).norm(dim=1)  # (H,)


def _head_activations(model: nn.Module, attns: list[nn.Module], calib_ids) -> list[torch.Tensor]:
    """Per head: mean over tokens of ||o_h|| (its attention output) times ||Wo_h||_F."""
    D = attns[0].head_dim  # every layer's heads have the same size
    # Wo's input is the heads' outputs side by side, (B, T, H*D): one norm per head.
    means = _mean_input(model, calib_ids, [a.wo for a in attns],
                        lambda o: o.unflatten(-1, (-1, D)).norm(dim=-1))
    with torch.no_grad():
        return [mean * _head_slices(a)[1].float().flatten(1).norm(dim=1).cpu()
                for mean, a in zip(means, attns)]


def layer_scores(model: nn.Module, score: Score = "activation", calib_ids=None) -> torch.Tensor:
    """Importance of every block, (n_layer,). "activation" is ShortGPT's Block Influence."""
    _need(score, calib_ids)
    blocks = list(model.layers)
    if score == "weight":
        with torch.no_grad():
            return torch.stack([b.attn.wo.weight.float().norm() + b.mlp.w2.weight.float().norm()
                                for b in blocks])
    if score == "gradient":
        return _with_grads(model, calib_ids, lambda: torch.stack(
            [_taylor(*[(p[None], p.grad[None], 0) for p in b.parameters()])[0]
             for b in blocks]))
    sums, counts = torch.zeros(len(blocks)), [0] * len(blocks)

    def hook(i):
        def fwd(mod, args, out):
            cos = F.cosine_similarity(args[0].float(), out.float(), dim=-1).flatten()
            sums[i] += (1 - cos).sum().cpu()
            counts[i] += cos.numel()
        return fwd

    hooks = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    try:
        _run(model, calib_ids, grad=False)
    finally:
        for h in hooks:
            h.remove()
    return sums / torch.tensor(counts, dtype=torch.float)
