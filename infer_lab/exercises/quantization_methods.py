"""Lab 02's calibrated-quantization exercises: the learner builds GPTQ's loop and AWQ's search.

* gptq_quantize (Frantar et al. 2022, GPTQ): round the columns of W (out, in) one at a
  time; as column j leaves, push its rounding error onto the columns not yet rounded with
  the inverse Hessian (the Optimal Brain Surgeon update), then remove j from H^-1:

      e_j = (w_j - q_j) / [H^-1]_jj,        w_k -= e_j [H^-1]_jk          (k > j)
      H^-1 <- H^-1 - H^-1[:, j] H^-1[j, :] / [H^-1]_jj                     (downdate)

  Without the downdate the later updates use the curvature of a problem in which the
  rounded columns could still move: wrong GPTQ. Group scales are fixed when the loop
  reaches a group's first column, from the weights as updated so far (the reference
  code's choice). The same as ``infer_lab.quant.gptq.gptq_quantize_weight`` with fp32
  scales (cross-checked in the tests), which gets the rows of the shrinking H^-1 from
  one Cholesky factor instead.
* awq_scale_search (Lin et al. 2023, AWQ): per input channel s = mean|x|^alpha,
  normalised to sqrt(max s * min s) = 1; for each alpha = k / grid, k = 0..grid-1, score
  the output error of Q(W diag(s)) diag(s)^-1 on the calibration inputs and keep the s of
  the best alpha (the first, on a tie). ``quantize`` is the group quantizer, an argument.
  The same as ``infer_lab.quant.awq.awq_search_scales`` given the same quantizer.

Both plug into ``lab02_quantization_explain.calibrated_errors(..., gptq=, awq=)``: lab 02
quantizes the layer whose errors it plots with the learner's once they pass.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.QUANTIZATION

Quantizer = Callable[[torch.Tensor, int, int], torch.Tensor]  # (W, bits, group_size) -> W_hat


# -- references -------------------------------------------------------------------------
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int,
                  group_size: int) -> torch.Tensor:
    """GPTQ's column loop: W (out, in) rounded to a symmetric ``bits``-bit grid with one
    absmax scale per row and group of ``group_size`` columns, each column's error spread
    onto the later ones through the inverse of the (damped) Hessian H (in, in); returns
    the dequantized weight (out, in)."""
    W = W.clone()  # (out, in): the not-yet-rounded columns move as errors arrive
    Hinv = torch.linalg.inv(H)  # (in, in), shrinks as columns leave
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:  # a new group: its scales from the weights as they are now
            s = W[:, j:j + group_size].abs().amax(dim=1) / qmax  # (out,)
        Q[:, j] = torch.round(W[:, j] / s).clamp(-qmax, qmax) * s  # (out,)
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]  # (out,)
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]  # OBS: later columns absorb it
        Hinv -= Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]  # column j leaves
    return Q


# Quoted: show_solution's copy of this function runs in a notebook, where Quantizer is unknown.
def awq_scale_search(W: torch.Tensor, x: torch.Tensor, bits: int, group_size: int,
                     grid: int, quantize: "Quantizer") -> torch.Tensor:  # noqa: UP037
    """AWQ's per-input-channel scales s (in,) for W (out, in) on calibration inputs x (N, in):
    s = mean|x|^alpha normalised to geometric mid-range 1, alpha = k / grid searched for the
    smallest output error ||x W^T - x (Q(W diag(s)) diag(s)^-1)^T||^2."""
    stats = x.abs().mean(dim=0)  # (in,): how large each input channel runs
    ref = x @ W.T  # (N, out)
    best, best_s = float("inf"), None
    for k in range(grid):
        s = stats.clamp(min=1e-5) ** (k / grid)  # (in,)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = quantize(W * s, bits, group_size) / s  # (out, in): scaled, rounded, undone
        loss = (ref - x @ w_hat.T).pow(2).mean().item()
        if loss < best:
            best, best_s = loss, s
    return best_s


def group_rtn(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric round-to-nearest per group of a row, dequantized: the quantizer the AWQ
    cases hand in (exercise 2's answer)."""
    rows, cols = w.shape
    qmax = 2 ** (bits - 1) - 1
    g = w.reshape(rows, cols // group_size, group_size)  # (rows, G, gs)
    scale = g.abs().amax(dim=-1, keepdim=True) / qmax  # (rows, G, 1)
    return (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(rows, cols)


# -- wrong GPTQ loops ---------------------------------------------------------------------
def _gptq(W, H, bits, group_size, *, downdate=True, propagate=True, use_h=False,
          divide=True, static_scales=False):
    W = W.clone()
    Hinv = H.clone() if use_h else torch.linalg.inv(H)
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    W0 = W.clone()
    for j in range(W.shape[1]):
        if j % group_size == 0:
            src = W0 if static_scales else W
            s = src[:, j:j + group_size].abs().amax(dim=1) / qmax
        Q[:, j] = torch.round(W[:, j] / s).clamp(-qmax, qmax) * s
        if not propagate:
            continue
        err = (W[:, j] - Q[:, j]) / (Hinv[j, j] if divide else 1)
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        if downdate:
            Hinv -= Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return Q


def _gptq_fixed_hinv(W, H, bits, group_size):
    return _gptq(W, H, bits, group_size, downdate=False)


def _gptq_rtn(W, H, bits, group_size):
    return _gptq(W, H, bits, group_size, propagate=False)


def _gptq_h_not_inverse(W, H, bits, group_size):
    return _gptq(W, H, bits, group_size, use_h=True)


def _gptq_no_divide(W, H, bits, group_size):
    return _gptq(W, H, bits, group_size, divide=False)


def _gptq_static_scales(W, H, bits, group_size):
    return _gptq(W, H, bits, group_size, static_scales=True)


# -- wrong AWQ searches -------------------------------------------------------------------
def _awq(W, x, bits, group_size, grid, quantize, *, stat="mean", normalise=True,
         score="output", inclusive=False):
    stats = x.abs().mean(0) if stat == "mean" else x.abs().amax(0)
    ref = x @ W.T
    best, best_s = float("inf"), None
    for k in range(grid):
        alpha = k / (grid - 1) if inclusive and grid > 1 else k / grid
        s = stats.clamp(min=1e-5) ** alpha
        if normalise:
            s = s / (s.max() * s.min()).sqrt()
        w_hat = quantize(W * s, bits, group_size) / s
        loss = ((ref - x @ w_hat.T).pow(2).mean() if score == "output"
                else (W - w_hat).pow(2).mean()).item()
        if loss < best:
            best, best_s = loss, s
    return best_s


def _awq_weight_error(W, x, bits, group_size, grid, quantize):
    return _awq(W, x, bits, group_size, grid, quantize, score="weight")


def _awq_max_stat(W, x, bits, group_size, grid, quantize):
    return _awq(W, x, bits, group_size, grid, quantize, stat="max")


def _awq_unnormalised(W, x, bits, group_size, grid, quantize):
    return _awq(W, x, bits, group_size, grid, quantize, normalise=False)


def _awq_alpha_to_one(W, x, bits, group_size, grid, quantize):
    return _awq(W, x, bits, group_size, grid, quantize, inclusive=True)


# -- cases --------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def calib_inputs(n: int, d: int, seed: int, salient: int = 2) -> torch.Tensor:
    """(n, d) inputs with correlated channels and ``salient`` channels 10x larger than the
    rest, like the activations entering an LLM's linear layers."""
    g = _gen(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)  # correlate channels
    x = torch.randn(n, d, generator=g) @ mix  # (n, d)
    x[:, torch.randperm(d, generator=g)[:salient]] *= 10
    return x


def gptq_case(out: int, cols: int, bits: int, group_size: int, seed: int) -> Case:
    """W (out, cols) float64 and a damped Hessian of correlated inputs (float64)."""
    x = calib_inputs(4 * cols, cols, seed + 1).double()  # (N, in)
    H = 2 * x.T @ x / x.shape[0]  # (in, in)
    H += 0.01 * H.diagonal().mean() * torch.eye(cols, dtype=H.dtype)  # damping, as GPTQ
    return Case((torch.randn(out, cols, generator=_gen(seed), dtype=torch.float64), H,
                 bits, group_size))


def _random_gptq_case(rng: random.Random) -> Case:
    gs = rng.choice([2, 4, 8])
    return gptq_case(rng.randint(1, 6), gs * rng.randint(1, 4), rng.randint(2, 4), gs,
                     rng.randrange(2**31))


def awq_case(out: int, cols: int, bits: int, group_size: int, grid: int, seed: int) -> Case:
    x = calib_inputs(32, cols, seed + 1, salient=max(1, cols // 8))  # (N, in)
    w = torch.randn(out, cols, generator=_gen(seed))  # (out, in)
    return Case((w, x, bits, group_size, grid, group_rtn))


def _random_awq_case(rng: random.Random) -> Case:
    gs = rng.choice([4, 8, 16])
    return awq_case(rng.randint(2, 8), gs * rng.randint(1, 3), rng.randint(2, 4), gs,
                    rng.randint(4, 10), rng.randrange(2**31))


EXERCISES = [
    Exercise(
        "gptq_quantize", LAB, gptq_quantize,
        fixed_cases=[gptq_case(2, 4, 2, 4, 0), gptq_case(3, 8, 3, 8, 1),
                     gptq_case(4, 8, 2, 4, 2), gptq_case(6, 16, 3, 8, 3),
                     gptq_case(8, 32, 4, 16, 4)],
        random_case=_random_gptq_case, n_random=12,
        rtol=1e-6, atol=1e-9, kind="technique",
        hint="Round one column at a time. The rounding error of a column, divided by that "
             "column's diagonal entry of the inverse Hessian, is pushed onto the columns not "
             "yet rounded in proportion to its row of the inverse Hessian. Then the column "
             "leaves the problem: remove it from the inverse Hessian (the rank-one downdate "
             "in the text) before the next one. A group's scale is set when the loop reaches "
             "its first column, from the weights as updated so far.",
        code_hint="W = W.clone(); Hinv = torch.linalg.inv(H); for j in range(W.shape[1]): "
                  "(if j % group_size == 0: s = W[:, j:j+group_size].abs().amax(1) / qmax); "
                  "Q[:, j] = round(W[:, j] / s).clamp(-qmax, qmax) * s; "
                  "err = (W[:, j] - Q[:, j]) / Hinv[j, j]; "
                  "W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]; "
                  "Hinv -= Hinv[:, j:j+1] @ Hinv[j:j+1, :] / Hinv[j, j]",
        mistakes=[
            Mistake("no error propagation", _gptq_rtn,
                    "That is round-to-nearest: every column is rounded on its own. GPTQ pushes "
                    "each column's rounding error onto the columns still to be rounded."),
            Mistake("fixed H^-1 (no downdate)", _gptq_fixed_hinv,
                    "Your updates use the inverse Hessian of the full problem for every column. "
                    "Once a column is rounded it can no longer move, so it must leave H^-1: "
                    "downdate it (subtract the outer product of its column and row of H^-1, "
                    "divided by its diagonal entry) before the next column."),
            Mistake("H, not H^-1", _gptq_h_not_inverse,
                    "The update is weighted by the INVERSE Hessian: invert H (it is damped, "
                    "so it is invertible) before the loop."),
            Mistake("error not divided by [H^-1]_jj", _gptq_no_divide,
                    "Divide the column's rounding error by its diagonal entry of H^-1 before "
                    "spreading it: that makes the rounded column land exactly on its code."),
            Mistake("scales from the original weights", _gptq_static_scales,
                    "A group's scale is taken when the loop reaches the group, from the "
                    "weights as the earlier columns' errors have moved them, not from the "
                    "original W before the loop."),
        ],
    ),
    Exercise(
        "awq_scale_search", LAB, awq_scale_search,
        fixed_cases=[awq_case(4, 8, 3, 4, 5, 0), awq_case(6, 16, 2, 8, 10, 1),
                     awq_case(8, 32, 4, 16, 8, 2), awq_case(3, 12, 3, 4, 6, 3)],
        random_case=_random_awq_case, n_random=12,
        rtol=1e-5, atol=1e-7, kind="technique",
        hint="Each input channel's salience is its mean absolute activation over the "
             "calibration tokens. For each exponent alpha on the grid (from 0 up to, not "
             "including, 1), raise the salience to alpha, normalise so the largest and "
             "smallest scale multiply to 1, scale the weight's columns up, quantize with the "
             "given quantizer, undo the scaling, and measure the error of the layer's OUTPUT "
             "on the calibration inputs. Return the scales of the best alpha (the first one "
             "on a tie).",
        code_hint="stats = x.abs().mean(0); ref = x @ W.T; for k in range(grid): "
                  "s = stats.clamp(min=1e-5) ** (k / grid); s = s / (s.max() * s.min()).sqrt(); "
                  "w_hat = quantize(W * s, bits, group_size) / s; "
                  "loss = (ref - x @ w_hat.T).pow(2).mean().item(); keep s when loss < best",
        mistakes=[
            Mistake("weight error, not output error", _awq_weight_error,
                    "Score each alpha by the error of the layer's output on the calibration "
                    "inputs, x W^T against x W_hat^T, not by the weight error: what AWQ protects "
                    "is the output the large activations multiply."),
            Mistake("max |x|, not mean |x|", _awq_max_stat,
                    "The salience of a channel is its MEAN absolute activation over the tokens, "
                    "not its largest one."),
            Mistake("scales not normalised", _awq_unnormalised,
                    "Normalise s by sqrt(max s * min s), so that the scales sit around 1 and "
                    "the scaled weight keeps a sensible range for fp16 scales."),
            Mistake("alpha grid reaches 1", _awq_alpha_to_one,
                    "The grid is alpha = k / grid for k = 0 .. grid-1: from 0 (plain RTN) up to, "
                    "not including, 1."),
        ],
    ),
]
