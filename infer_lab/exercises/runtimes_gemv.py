"""Lab 08's technique exercise: the batch-1 linear written as a multiply-and-sum.

``y = (x[..., None, :] * W).sum(-1) + b`` is the form in which inductor fuses a GEMV into one
vectorized loop per output row that streams each weight once, where MKL's GEMM at one row
reads cold weights at a third of the memory's speed (:class:`infer_lab.runtimes.gemv.
ReductionLinear`, whose one-token product this is). A GEMM call (``F.linear``, ``@``,
``einsum``) gives the same numbers and is refused: the check records the ATen ops the
learner's function dispatches (a ``TorchDispatchMode``) and names the matrix products it
found. Once it passes, the lab compiles its decode step with the learner's function in
every linear (:mod:`infer_lab.lessons.lab08_runtimes_gemv`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from . import catalog
from .checker import ICONS, Case, Exercise, Mistake

LAB = catalog.RUNTIMES


def gemv_reduction(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a multiply and a row sum: each output n is
    ``sum_k x[..., k] * weight[n, k]``, the loop a compiled batch-1 GEMV runs."""
    y = (x[..., None, :] * weight).sum(-1)  # (..., 1, K) * (N, K) -> (..., N)
    return y if bias is None else y + bias


def _gemv_case(seed: int, lead: tuple[int, ...], K: int, N: int, bias: bool,
               dtype: torch.dtype = torch.float32) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, K, generator=g, dtype=dtype)
    w = torch.randn(N, K, generator=g, dtype=dtype) / math.sqrt(K)
    b = torch.randn(N, generator=g, dtype=dtype) if bias else None
    return Case((x, w, b))


def _random_gemv(rng: random.Random) -> Case:
    lead = rng.choice([(1,), (1, 1), (2, 1), (3,)])
    return _gemv_case(rng.randrange(2**31), lead, rng.randint(1, 96), rng.randint(1, 80),
                      rng.random() < 0.5)


# ATen ops that are a library matrix product: the answer must not call one.
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot",
                      "matmul", "linear", "_weight_int8pack_mm", "tensordot", "einsum"})


class _OpRecorder(TorchDispatchMode):
    """Records the name of every ATen op dispatched inside it (after decomposition)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def gemm_ops(fn: Callable, *args) -> set[str]:
    """The library matrix products ``fn(*args)`` dispatches (empty for a reduction)."""
    with _OpRecorder() as rec:
        fn(*args)
    return rec.ops & GEMM_OPS


GEMM_HINT = ("Your function calls a library matrix product (F.linear, @, matmul, einsum): "
             "the same numbers, but that is the GEMM whose one-row case streams weights "
             "slowly. Write it as an elementwise product of x with every row of the weight, "
             "summed over the input axis: the form the compiler fuses into one loop.")


class ReductionExercise(Exercise):
    """An Exercise that also refuses an answer built on a GEMM call (see :func:`gemm_ops`)."""

    def screen(self, fn: Callable) -> tuple[str, str] | None:
        early = super().screen(fn)
        if early is not None:
            return early
        probe = self.fixed_cases[1]
        try:
            used = gemm_ops(fn, *probe.args)
        except Exception:  # noqa: BLE001 - a stub or a bug: the cases report it
            return None
        if used:
            return "failed", (f"{ICONS['failed']} {self.name}: your function dispatches "
                              f"{', '.join(sorted(used))}, a matrix-multiply kernel, on "
                              f"{probe.describe(self.name)}\n   Hint: {self.hint}\n   "
                              f"Your answer matches a known mistake: {GEMM_HINT}")
        return None



def _gemv_no_bias(x, w, b=None):
    return (x[..., None, :] * w).sum(-1)


def _gemv_wrong_axis(x, w, b=None):
    y = (x[..., None, :] * w).sum(-2)  # sums over the outputs: (..., K)
    return y if b is None else y + b.sum()


def _gemv_as_vector(x, w, b=None):
    y = (x.reshape(-1)[None, :] * w).sum(-1)  # x read as one vector: the row axes are lost
    return y if b is None else y + b


def _gemv_bias_inside(x, w, b=None):
    prod = x[..., None, :] * w  # (..., N, K)
    return (prod if b is None else prod + b[:, None]).sum(-1)  # K copies of the bias


GEMV_CASES = [_gemv_case(1, (1,), 8, 4, False), _gemv_case(2, (1,), 16, 12, True),
              _gemv_case(3, (1, 1), 33, 7, True), _gemv_case(4, (2, 1), 5, 5, True),
              _gemv_case(5, (1,), 1, 3, True), _gemv_case(6, (4,), 64, 48, False),
              _gemv_case(7, (1,), 24, 10, True, torch.float64),
              _gemv_case(8, (1, 1), 256, 32, True),
              _gemv_case(9, (1,), 20, 6, False, torch.float64)]  # the dtype is kept


GEMV_REDUCTION = ReductionExercise(
        "gemv_reduction", LAB, gemv_reduction,
        fixed_cases=GEMV_CASES, random_case=_random_gemv, n_random=12, rtol=1e-5, atol=1e-5,
        kind="technique",
        hint="Output n of a linear layer is the dot product of the input row with row n of "
             "the weight. Broadcast the input against every row of the (N, K) weight at "
             "once, multiply elementwise, sum over the input axis K, then add the bias (when "
             "there is one) once per output. Keep the input's leading axes and dtype; call no "
             "matrix-multiply routine: the multiply-and-sum is the point.",
        code_hint="y = (x[..., None, :] * weight).sum(-1)  # (..., 1, K) * (N, K) -> (..., N); "
                  "return y if bias is None else y + bias",
        mistakes=[
            Mistake("a GEMM, not a reduction", F.linear, GEMM_HINT),
            Mistake("bias dropped", _gemv_no_bias,
                    "Your outputs miss the bias: when bias is given, add it to the sums."),
            Mistake("summed over the outputs", _gemv_wrong_axis,
                    "Your sum runs over the output axis N of the product: a linear layer "
                    "sums over the input axis K, the last one, leaving one number per "
                    "output."),
            Mistake("input read as one vector", _gemv_as_vector,
                    "Your answer loses x's leading axes (a (1, K) input must give a (1, N) "
                    "output, a (B, 1, K) one (B, 1, N)): broadcast x against the weight "
                    "with one new axis before its last, instead of flattening it."),
            Mistake("bias inside the sum", _gemv_bias_inside,
                    "Your bias is added to every product before the sum, so each output "
                    "gets K copies of it: add it once, after summing over K."),
        ])
