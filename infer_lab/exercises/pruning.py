"""Exercises of lab 03 (pruning).

Warm-ups (the mask formulas; the learner's masks then prune the model the lab measures):

* magnitude_mask: unstructured magnitude pruning (Han et al. 2015). With k =
  ``round(sparsity * numel)`` and tau the k-th smallest |w| of the whole tensor, keep
  ``|w| > tau``: exactly the k smallest go (ties aside). ``torch.kthvalue``, a sort or a
  topk all give it; ``torch.quantile`` interpolates between neighbours and generally
  prunes another count (a registered mistake).
* mask_2_4: semi-structured 2:4 sparsity (Mishra et al. 2021, NVIDIA Ampere's sparse
  tensor cores): in every group of 4 consecutive weights along a row (the input
  dimension of an ``nn.Linear`` weight ``(out, in)``), keep the 2 of largest magnitude.

Techniques (structured pruning: :mod:`.pruning_structured`):

* remove_neurons: cut neurons out of a SwiGLU MLP (rows of W1, W3; columns of W2).
* neuron_importance: the activation-aware neuron score that decides which go.

Masks are bool tensors of the weight's shape: ``True`` = kept, ``False`` = pruned.
"""

from __future__ import annotations

import random

import torch

from . import catalog
from .checker import Case, Exercise, Mistake
from .predictions import Prediction
from .pruning_structured import NEURON_EXERCISES

LAB = catalog.PRUNING  # the notebook's name


# -- references -------------------------------------------------------------------------
def mask_2_4(w: torch.Tensor) -> torch.Tensor:
    """Bool (out, in): True for the 2 largest-|w| weights of each group of 4 along a row."""
    out, n_in = w.shape
    groups = w.abs().reshape(out, n_in // 4, 4)  # consecutive input weights of one row
    keep = groups.topk(2, dim=-1).indices  # (out, in/4, 2)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out, n_in)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask of ``w``'s shape that prunes the ``k = round(sparsity * numel)`` smallest
    |w|: keep |w| > tau, tau the k-th smallest |w| (nothing pruned when k = 0)."""
    n_prune = round(sparsity * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[w.abs().flatten().argsort()[:n_prune]] = False  # one ranking for the whole tensor
    return mask.reshape(w.shape)


# -- wrong answers a learner might write ----------------------------------------------------
def _m24_smallest(w):
    out, n_in = w.shape
    g = w.abs().reshape(out, n_in // 4, 4)
    keep = g.topk(2, dim=-1, largest=False).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True).reshape(out, n_in)


def _m24_columns(w):
    return mask_2_4(w.T).T  # groups of 4 down a column (the output dimension)


def _m24_signed(w):
    out, n_in = w.shape
    g = w.reshape(out, n_in // 4, 4)  # largest value, not largest magnitude
    keep = g.topk(2, dim=-1).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True).reshape(out, n_in)


def _mag_keep_fraction(w, sparsity):
    return magnitude_mask(w, 1 - sparsity)  # prunes (1 - sparsity) of the weights


def _mag_per_row(w, sparsity):
    return torch.stack([magnitude_mask(row, sparsity) for row in w])


def _mag_signed(w, sparsity):
    n_prune = round(sparsity * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[w.flatten().argsort()[:n_prune]] = False  # the most negative, not the smallest
    return mask.reshape(w.shape)


def _mag_quantile(w, sparsity):
    # torch.quantile's default interpolates: tau lands between two neighbouring |w|, and
    # |w| > tau prunes floor(s (n - 1)) + 1 weights, not round(s n) (one at s = 0 too).
    return w.abs() > torch.quantile(w.abs().flatten(), sparsity)


# -- cases ------------------------------------------------------------------------------
def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_24_case(rng: random.Random) -> Case:
    # Both sides multiples of 4, so "groups down the columns" runs and gets its hint.
    return Case((_randn(rng.randrange(2**31), 4 * rng.randint(1, 8), 4 * rng.randint(1, 16)),))


def _random_mag_case(rng: random.Random) -> Case:
    rows, cols = rng.randint(2, 12), rng.randint(2, 40)
    s = rng.choice([0.1, 0.25, 0.5, 0.7, 0.9, rng.random()])
    return Case((_randn(rng.randrange(2**31), rows, cols), s))


EXERCISES = [
    Exercise(
        "magnitude_mask", LAB, magnitude_mask,
        fixed_cases=[Case((torch.tensor([[0.5, -0.1, 2.0, -3.0]]), 0.5)),
                     Case((_randn(0, 8, 16), 0.5)), Case((_randn(1, 6, 10), 0.0)),
                     Case((_randn(2, 4, 4), 1.0)), Case((_randn(3, 16, 32), 0.9)),
                     Case((_randn(4, 5, 7), 0.3)), Case((_randn(5, 3000), 0.37))],
        random_case=_random_mag_case,
        hint="Count the weights to prune first: k is sparsity times the number of weights, "
             "rounded. Those k weights are the ones of smallest magnitude in the whole tensor, "
             "one ranking for all of it; the threshold is the k-th smallest magnitude and a "
             "weight stays only if its magnitude is above it. True means kept.",
        code_hint="k = round(sparsity * w.numel()); a = w.abs().flatten(); then either "
                  "tau = a.kthvalue(k).values and w.abs() > tau (when k > 0), or "
                  "mask = torch.ones(w.numel(), dtype=torch.bool); mask[a.argsort()[:k]] = False; "
                  "return mask.reshape(w.shape).",
        mistakes=[
            Mistake("keep fraction", _mag_keep_fraction,
                    "sparsity is the fraction of weights REMOVED: at sparsity 0.9 only 10% of "
                    "the weights are kept."),
            Mistake("per row", _mag_per_row,
                    "Rank all weights of the tensor together (one global threshold), not each "
                    "row separately: some rows hold more large weights than others."),
            Mistake("value, not magnitude", _mag_signed,
                    "Rank by magnitude: the most negative weights are large ones, not the "
                    "smallest."),
            Mistake("interpolated quantile", _mag_quantile,
                    "The threshold is the k-th smallest magnitude itself, with k the rounded "
                    "count. torch.quantile interpolates between two neighbouring magnitudes by "
                    "default, so it prunes a different number of weights (one even at "
                    "sparsity 0); use kthvalue, a sort or topk on the count."),
        ],
    ),
    Exercise(
        "mask_2_4", LAB, mask_2_4,
        fixed_cases=[Case((torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, -4.0, 0.0, 1.0],
                                         [-2.0, 0.3, 0.1, 0.4, 0.5, 0.6, -0.7, 0.8],
                                         [1.0, 2.0, 3.0, 4.0, -4.0, -3.0, -2.0, -1.0],
                                         [0.4, 0.3, 0.2, 0.1, 0.0, 0.9, 0.05, 0.0]]),)),
                     Case((_randn(0, 8, 16),)), Case((_randn(1, 4, 4),)),
                     Case((_randn(2, 16, 64),))],
        random_case=_random_24_case,
        hint="Cut each row into groups of 4 consecutive weights; in every group keep the "
             "two of largest magnitude and prune the other two. The mask has the weight's "
             "shape, True where kept.",
        code_hint="g = w.abs().reshape(out, in // 4, 4); keep = g.topk(2, dim=-1).indices; "
                  "torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True), then "
                  "reshape back to (out, in).",
        mistakes=[
            Mistake("keeps the smallest", _m24_smallest,
                    "Magnitude pruning keeps the LARGEST |w| of each group: small weights "
                    "contribute least to the output."),
            Mistake("groups down the columns", _m24_columns,
                    "The 2:4 groups run along a row of W (out, in), i.e. along the input "
                    "dimension the matmul sums over, not down a column."),
            Mistake("value, not magnitude", _m24_signed,
                    "Rank by magnitude: a large negative weight matters as much as a large "
                    "positive one."),
        ],
    ),
    *NEURON_EXERCISES,
]

PREDICTIONS = [
    Prediction(
        "prune_mlp_params_removed", LAB,
        "Removing half of every layer's MLP neurons: what share of code-m's parameters goes? "
        "(8 layers, d_model 256, d_ff 704, the 4096 x 256 embedding tied to the output; "
        "passing is within 2 percentage points)",
        "% of parameters", abs_tol=2.0,
        explain="Each neuron holds 3 d_model weights (its W1 row, W3 row and W2 column): "
                "half of 704 neurons x 3 x 256 x 8 layers is 2.16 M of code-m's 6.95 M, "
                "31%. Attention, the norms and the embedding keep the rest."),
    Prediction(
        "prune_mlp_speedup", LAB,
        "Decode throughput of the model with half its MLP neurons removed, as a multiple of "
        "the dense model's (passing is within 25% of the measured ratio)",
        "x dense", rel_tol=0.25,
        explain="Decoding a small batch reads every weight once per step, so time follows "
                "the bytes read: 31% fewer parameters would give at most 1/0.69 = 1.45x, "
                "less in practice because attention, the KV cache, the norms and the "
                "per-step overhead of a tiny model do not shrink."),
]
