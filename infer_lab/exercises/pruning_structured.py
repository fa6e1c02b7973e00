"""Lab 03's structured-pruning exercises: the learner builds the technique.

* remove_neurons: SwiGLU(x) = W2 (silu(W1 x) * W3 x); neuron j is row j of W1 and W3 and
  column j of W2 (LLM-Pruner, Ma et al. 2023; Minitron, Muralidharan et al. 2024).
  Removing neurons ``drop`` returns the three smaller matrices. Graded on the shapes and
  on the smaller MLP's output: each case makes the dropped neurons contribute nothing
  (a zero row of W1 or W3, or a zero column of W2), so a correct cut leaves the output
  exactly as it was, whatever order the kept neurons are stored in.
* neuron_importance: the activation-aware score that picks them, in the spirit of Wanda
  (Sun et al. 2023, |W| ||X||): neuron j scores mean_t |a_tj| * ||W2[:, j]||, its mean
  magnitude on calibration tokens x times the norm of the column that writes it back to
  the residual stream, with a = silu(x W1^T) * (x W3^T). The same as
  ``infer_lab.prune.mlp_scores(model, "activation")`` (cross-checked in the tests).

Both plug into ``infer_lab.prune.prune_mlp(..., score=, remove=)``: lab 03 prunes code-m
with the learner's once they pass.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import catalog
from .checker import Case, Exercise, Mistake, compare

LAB = catalog.PRUNING


# -- references -------------------------------------------------------------------------
def remove_neurons(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                   drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W1, W3, W2) of a SwiGLU MLP without neurons ``drop``: W1, W3 (d_ff, d) lose those
    rows, W2 (d, d_ff) those columns; the kept neurons stay in their order."""
    keep = torch.ones(w1.shape[0], dtype=torch.bool)
    keep[drop] = False  # (d_ff,)
    return w1[keep], w3[keep], w2[:, keep]  # (d_ff', d), (d_ff', d), (d, d_ff')


def neuron_importance(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
                      x: torch.Tensor) -> torch.Tensor:
    """(d_ff,) score of each neuron: mean over tokens of |a_j| times ||W2[:, j]||, where
    a = silu(x W1^T) * (x W3^T) is the SwiGLU hidden activation of inputs x (tokens, d)."""
    a = F.silu(x @ w1.T) * (x @ w3.T)  # (tokens, d_ff)
    return a.abs().mean(0) * w2.norm(dim=0)  # (d_ff,)


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
           w2: torch.Tensor) -> torch.Tensor:
    """W2 (silu(W1 x) * W3 x) for inputs x (tokens, d): (tokens, d)."""
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


# -- grading remove_neurons: shapes and the output, not the storage order ------------------------
@dataclass
class Smaller:
    """What a remove_neurons answer is judged on."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    out: torch.Tensor | None  # the smaller MLP's output on the probe; None if shapes clash


def _probe(w1: torch.Tensor) -> torch.Tensor:
    d_ff, d = w1.shape
    g = torch.Generator().manual_seed(1000 * d + d_ff)
    return torch.randn(6, d, generator=g).to(w1.dtype)  # (tokens, d)


class MLPExercise(Exercise):
    """An exercise whose answer is a smaller MLP (W1, W3, W2): graded on its shapes, dtypes
    and its output on a probe batch, so equivalent cuts (any order of kept neurons) pass."""

    def _call(self, fn, case: Case) -> Smaller:
        args = copy.deepcopy(case.args)
        got = fn(*args, **copy.deepcopy(case.kwargs))
        if not (isinstance(got, (tuple, list)) and len(got) == 3
                and all(isinstance(t, torch.Tensor) for t in got)):
            raise TypeError(f"return the three smaller weights (w1, w3, w2) as a tuple, not "
                            f"{type(got).__name__}")
        w1, w3, w2 = got
        try:
            out = swiglu(_probe(case.args[0]), w1, w3, w2)
        except RuntimeError:  # shapes that do not make an MLP
            out = None
        return Smaller(tuple(tuple(t.shape) for t in got), tuple(t.dtype for t in got), out)

    def mismatch(self, case: Case, got: Smaller) -> str | None:
        want = self._call(self.reference, case)
        return self._differ(got, want)

    def _differ(self, got: Smaller, want: Smaller) -> str | None:
        if got.shapes != want.shapes:
            return (f"expected weights of shapes w1 {want.shapes[0]}, w3 {want.shapes[1]}, "
                    f"w2 {want.shapes[2]}; got {got.shapes[0]}, {got.shapes[1]}, "
                    f"{got.shapes[2]}")
        if got.dtypes != want.dtypes:
            return (f"expected dtypes {[str(d) for d in want.dtypes]}, got "
                    f"{[str(d) for d in got.dtypes]} (keep the weights' dtype)")
        why = compare(got.out, want.out, self.rtol, self.atol)
        return None if why is None else (
            "the smaller MLP's output differs from the full MLP's, although the dropped "
            f"neurons contribute nothing in this case: you removed other neurons ({why})")

    def diagnose(self, case: Case, got: Smaller) -> str | None:
        for m in self.mistakes:
            try:
                if self._differ(got, self._call(m.fn, case)) is None:
                    return m.hint
            except Exception:  # noqa: BLE001, S112  a mistake that cannot run is no match
                continue
        return None


# -- wrong answers ----------------------------------------------------------------------------
def _rm_keeps_listed(w1, w3, w2, drop):
    return w1[drop], w3[drop], w2[:, drop]  # keeps the listed neurons instead


def _rm_w2_rows(w1, w3, w2, drop):
    keep = torch.ones(w1.shape[0], dtype=torch.bool)
    keep[drop] = False
    return w1[keep], w3[keep], w2[keep.nonzero().flatten()]  # W2's rows: the wrong axis


def _rm_shifting(w1, w3, w2, drop):
    for j in sorted(drop.tolist()):  # one at a time: later indices now point one too far
        w1, w3 = torch.cat([w1[:j], w1[j + 1:]]), torch.cat([w3[:j], w3[j + 1:]])
        w2 = torch.cat([w2[:, :j], w2[:, j + 1:]], dim=1)
    return w1, w3, w2


def _rm_w3_kept(w1, w3, w2, drop):
    a, _, c = remove_neurons(w1, w3, w2, drop)
    return a, w3, c  # W3 forgotten


def _imp_no_w2(w1, w3, w2, x):
    return (F.silu(x @ w1.T) * (x @ w3.T)).abs().mean(0)


def _imp_signed(w1, w3, w2, x):
    return (F.silu(x @ w1.T) * (x @ w3.T)).mean(0).abs() * w2.norm(dim=0)


def _imp_no_gate(w1, w3, w2, x):
    return F.silu(x @ w1.T).abs().mean(0) * w2.norm(dim=0)


def _imp_swapped(w1, w3, w2, x):
    return neuron_importance(w3, w1, w2, x)  # silu on the up projection


def _imp_sum(w1, w3, w2, x):
    return neuron_importance(w1, w3, w2, x) * x.shape[0]


# -- cases ------------------------------------------------------------------------------
def _randn(g: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(dtype)


def _rm_case(d: int, d_ff: int, drop: list[int], silent: str, seed: int,
             dtype=torch.float32) -> Case:
    """Weights where neurons ``drop`` contribute nothing: their W1 or W3 row (silu(0) = 0,
    0 * anything = 0) or their W2 column is zero."""
    g = torch.Generator().manual_seed(seed)
    w1, w3, w2 = _randn(g, d_ff, d, dtype=dtype), _randn(g, d_ff, d, dtype=dtype), \
        _randn(g, d, d_ff, dtype=dtype)
    idx = torch.tensor(drop, dtype=torch.long)
    if silent == "w1":
        w1[idx] = 0
    elif silent == "w3":
        w3[idx] = 0
    else:
        w2[:, idx] = 0
    return Case((w1, w3, w2, idx))


def _random_rm_case(rng: random.Random) -> Case:
    d, d_ff = rng.randint(2, 16), rng.randint(3, 40)
    drop = rng.sample(range(d_ff), rng.randint(1, d_ff - 1))
    return _rm_case(d, d_ff, drop, rng.choice(["w1", "w3", "w2"]), rng.randrange(2**31))


def _imp_case(d: int, d_ff: int, tokens: int, seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    return Case((_randn(g, d_ff, d), _randn(g, d_ff, d), _randn(g, d, d_ff),
                 _randn(g, tokens, d)))


def _random_imp_case(rng: random.Random) -> Case:
    return _imp_case(rng.randint(2, 24), rng.randint(2, 48), rng.randint(2, 40),
                     rng.randrange(2**31))


NEURON_EXERCISES = [
    MLPExercise(
        "remove_neurons", LAB, remove_neurons, kind="technique",
        fixed_cases=[_rm_case(8, 6, [1, 4, 5], "w2", 0), _rm_case(8, 16, [0, 5, 15], "w1", 1),
                     _rm_case(6, 12, [11, 2, 7], "w3", 2), _rm_case(4, 5, [], "w2", 3),
                     _rm_case(16, 40, list(range(0, 40, 3)), "w2", 4),
                     _rm_case(8, 10, [9, 0], "w1", 5, torch.float64)],
        random_case=_random_rm_case,
        rtol=1e-5, atol=1e-6,
        hint="A neuron of this MLP lives in three places: its row of W1, its row of W3 and "
             "its column of W2. Removing it removes all three, and the neurons you keep must "
             "stay matched across the three matrices. Return the three smaller weights.",
        code_hint="keep = torch.ones(w1.shape[0], dtype=torch.bool); keep[drop] = False; "
                  "return w1[keep], w3[keep], w2[:, keep]",
        mistakes=[
            Mistake("keeps the listed neurons", _rm_keeps_listed,
                    "drop lists the neurons to REMOVE; you kept exactly those and removed the "
                    "rest."),
            Mistake("W2's rows", _rm_w2_rows,
                    "W2 is (d_model, d_ff): a neuron is one of its COLUMNS (the second axis), "
                    "the weights that carry its activation back to the residual stream."),
            Mistake("indices shift", _rm_shifting,
                    "Deleting neurons one at a time renumbers the ones after it, so the next "
                    "index points one neuron too far: decide which to keep first, then cut "
                    "them all at once."),
            Mistake("W3 forgotten", _rm_w3_kept,
                    "SwiGLU has two input matrices: the gate W1 and the up projection W3 lose "
                    "the same rows."),
        ],
    ),
    Exercise(
        "neuron_importance", LAB, neuron_importance, kind="technique",
        fixed_cases=[_imp_case(4, 6, 5, 0), _imp_case(8, 16, 32, 1), _imp_case(3, 7, 1, 2),
                     _imp_case(16, 24, 64, 3)],
        random_case=_random_imp_case,
        rtol=1e-5, atol=1e-6,
        hint="Run the calibration tokens through the MLP's hidden layer (the gated product "
             "of the two input projections), take each neuron's magnitude averaged over the "
             "tokens, and weigh it by the norm of the W2 column that writes that neuron back "
             "to the residual stream. One score per neuron.",
        code_hint="a = F.silu(x @ w1.T) * (x @ w3.T)  # (tokens, d_ff); "
                  "return a.abs().mean(0) * w2.norm(dim=0)",
        mistakes=[
            Mistake("no W2 norm", _imp_no_w2,
                    "A neuron that fires strongly but whose W2 column is tiny changes nothing "
                    "downstream: multiply by the norm of its W2 column."),
            Mistake("signed mean", _imp_signed,
                    "Average the MAGNITUDE over tokens: positive and negative activations "
                    "cancel in a plain mean, and both change the output."),
            Mistake("no gate", _imp_no_gate,
                    "The hidden activation is the gate times the up projection; silu(W1 x) "
                    "alone ignores W3."),
            Mistake("gate and up swapped", _imp_swapped,
                    "silu applies to the W1 projection (the gate), not to W3."),
            Mistake("sum over tokens", _imp_sum,
                    "Average over tokens, do not sum: the ranking is the same, but the score "
                    "must not grow with the size of the calibration set."),
        ],
    ),
]
