"""Exercises of lab 02 (quantization).

* absmax_quantize: symmetric round-to-nearest with one scale for the whole tensor,
  returned dequantized: ``s = max|w| / (2^(b-1) - 1)``, ``w_hat = s * round(w / s)``.
* group_quantize: the same per group of ``group_size`` consecutive weights of each row:
  W (rows, cols) viewed as (rows, cols / g, g), one absmax scale per group.
* pack_int4: two 4-bit codes per byte, even index in the low nibble:
  ``byte_k = q[2k] | (q[2k+1] << 4)``; the answer is uint8 (an int64 or float tensor with
  the same values fails: the dtype is the storage).

These three are warm-ups (formulas). The techniques the learner builds are in
:mod:`.quantization_outliers` (LLM.int8()'s split, KIVI's key scales) and
:mod:`.quantization_methods` (GPTQ's column loop, AWQ's scale search); ``EXERCISES`` lists
all seven in the lab's order, ``PREDICTIONS`` the lab's predict-then-measure questions.

Rounding: ``torch.round`` rounds halves to even, ``floor(x + 0.5)`` rounds them up. The
cases hold no exact ties (continuous random values, hand-picked numbers checked), so both,
and rounding half away from zero, pass (tests/test_exercises_lab02.py proves it).
"""

from __future__ import annotations

import random

import torch

from . import catalog
from .checker import Case, Exercise, Mistake
from .predictions import Prediction
from .quantization_methods import EXERCISES as _METHODS
from .quantization_outliers import EXERCISES as _OUTLIERS

LAB = catalog.QUANTIZATION  # the notebook's name


# -- references -------------------------------------------------------------------------
def absmax_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """w rounded to a symmetric ``bits``-bit grid with one absmax scale, dequantized."""
    qmax = 2 ** (bits - 1) - 1  # e.g. 127 for int8, 7 for int4: the grid is symmetric
    scale = w.abs().max() / qmax
    q = torch.round(w / scale).clamp(-qmax, qmax)  # integer codes
    return q * scale


def group_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """w (rows, cols) with one absmax scale per group of ``group_size`` weights of a row."""
    rows, cols = w.shape
    qmax = 2 ** (bits - 1) - 1
    g = w.reshape(rows, cols // group_size, group_size)  # (rows, n_groups, group_size)
    scale = g.abs().amax(dim=-1, keepdim=True) / qmax  # (rows, n_groups, 1)
    q = torch.round(g / scale).clamp(-qmax, qmax)
    return (q * scale).reshape(rows, cols)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(..., n) uint8 codes in 0..15 -> (..., n/2) uint8, even index in the low nibble."""
    return q[..., 0::2] | (q[..., 1::2] << 4)


# -- wrong answers a learner might write ----------------------------------------------------
def _absmax_pow2(w, bits):
    scale = w.abs().max() / 2 ** (bits - 1)
    return torch.round(w / scale).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale


def _absmax_truncate(w, bits):
    scale = w.abs().max() / (2 ** (bits - 1) - 1)
    return torch.trunc(w / scale) * scale


def _absmax_max_not_abs(w, bits):
    qmax = 2 ** (bits - 1) - 1
    scale = w.max() / qmax
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def _group_per_row(w, bits, group_size):
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def _group_down_columns(w, bits, group_size):
    rows, cols = w.shape
    qmax = 2 ** (bits - 1) - 1
    g = w.T.reshape(-1, group_size)  # consecutive weights down each column
    scale = g.abs().amax(dim=-1, keepdim=True) / qmax
    return (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(cols, rows).T


def _group_no_abs(w, bits, group_size):
    rows, cols = w.shape
    qmax = 2 ** (bits - 1) - 1
    g = w.reshape(rows, cols // group_size, group_size)
    scale = g.amax(dim=-1, keepdim=True) / qmax
    return (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(rows, cols)


def _pack_swapped(q):
    return (q[..., 0::2] << 4) | q[..., 1::2]


def _pack_halves(q):
    n = q.shape[-1] // 2
    return q[..., :n] | (q[..., n:] << 4)


def _pack_add_no_shift(q):
    return q[..., 0::2] + q[..., 1::2]


def _pack_int64(q):
    return q[..., 0::2].long() | (q[..., 1::2].long() << 4)


def _pack_float(q):
    return q[..., 0::2].float() + 16 * q[..., 1::2].float()


# -- cases ------------------------------------------------------------------------------
def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_absmax_case(rng: random.Random) -> Case:
    shape = rng.choice([(rng.randint(1, 64),), (rng.randint(1, 8), rng.randint(1, 32))])
    return Case((_randn(rng.randrange(2**31), *shape) * rng.choice([0.01, 1.0, 30.0]),
                 rng.randint(2, 8)))


def _group_case(rows: int, cols: int, bits: int, gs: int, seed: int) -> Case:
    w = _randn(seed, rows, cols)
    w[0, 0] = 8.0  # an outlier: per-group scales confine its damage to one group
    return Case((w, bits, gs))


def _random_group_case(rng: random.Random) -> Case:
    gs = rng.choice([2, 4, 8, 16, 32])
    return _group_case(rng.randint(1, 6), gs * rng.randint(1, 6), rng.randint(2, 8), gs,
                       rng.randrange(2**31))


def _codes(seed: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _random_pack_case(rng: random.Random) -> Case:
    shape = rng.choice([(2 * rng.randint(1, 32),), (rng.randint(1, 5), 2 * rng.randint(1, 16))])
    return Case((_codes(rng.randrange(2**31), *shape),))


_WARM_UPS = [
    Exercise(
        "absmax_quantize", LAB, absmax_quantize,
        fixed_cases=[Case((torch.tensor([0.5, -1.0, 0.25, 0.0]), 8)),
                     Case((torch.tensor([0.1, -2.0, 0.9, 1.4, -0.3]), 4)),
                     Case((torch.tensor([3.0, 1.0, 2.0]), 2)),  # max > 0 = |min|
                     Case((_randn(0, 4, 16), 8)), Case((_randn(1, 64), 3))],
        random_case=_random_absmax_case,
        rtol=1e-5, atol=1e-6,
        hint="One scale for the whole tensor maps its largest magnitude onto the largest "
             "code of a grid that is symmetric around zero. Divide by the scale, round to "
             "the nearest integer, keep it inside the grid, and multiply back.",
        code_hint="qmax = 2**(bits-1) - 1; scale = w.abs().max() / qmax; "
                  "return torch.round(w / scale).clamp(-qmax, qmax) * scale",
        mistakes=[
            Mistake("2^(b-1) levels", _absmax_pow2,
                    "The symmetric grid has qmax = 2**(bits-1) - 1 (127 for int8, 7 for int4), "
                    "not 2**(bits-1): the most negative code is left out so 0 sits in the middle."),
            Mistake("truncate", _absmax_truncate,
                    "Round to the nearest code (torch.round), do not truncate toward zero: "
                    "truncation doubles the worst-case error and biases every weight to 0."),
            Mistake("max, not absmax", _absmax_max_not_abs,
                    "Scale by the largest *magnitude*, w.abs().max(): a tensor whose most "
                    "negative value is larger in size than its maximum would clip."),
        ],
    ),
    Exercise(
        "group_quantize", LAB, group_quantize,
        fixed_cases=[_group_case(1, 8, 4, 4, 0), _group_case(2, 8, 4, 2, 1),
                     _group_case(3, 64, 4, 32, 2), _group_case(4, 12, 8, 12, 3),
                     _group_case(8, 64, 3, 16, 4)],
        random_case=_random_group_case,
        rtol=1e-5, atol=1e-6,
        hint="The same absmax rounding as exercise 1, with one scale per group of group_size "
             "neighbouring weights along a row: view each row as its groups, take each "
             "group's largest magnitude, round, and give the answer back in the original "
             "shape.",
        code_hint="g = w.reshape(rows, cols // group_size, group_size); "
                  "scale = g.abs().amax(dim=-1, keepdim=True) / qmax; "
                  "return (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(rows, cols)",
        mistakes=[
            Mistake("one scale per row", _group_per_row,
                    "That is per-channel quantization: each *group* of group_size consecutive "
                    "weights within a row needs its own scale."),
            Mistake("groups down the columns", _group_down_columns,
                    "Groups run along a row (the input dimension, the last axis), not down "
                    "a column."),
            Mistake("max, not absmax", _group_no_abs,
                    "Each group's scale comes from its largest magnitude: abs() before amax."),
        ],
    ),
    Exercise(
        "pack_int4", LAB, pack_int4,
        fixed_cases=[Case((torch.tensor([1, 2], dtype=torch.uint8),)),
                     Case((torch.tensor([15, 0, 0, 15], dtype=torch.uint8),)),
                     Case((torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]], dtype=torch.uint8),)),
                     Case((_codes(0, 3, 32),))],
        random_case=_random_pack_case,
        hint="Pair each even position with the odd position after it: the even code fills "
             "the low four bits of the byte, the odd code the high four. The answer is one "
             "byte per pair, still uint8: the dtype is what is stored.",
        code_hint="return q[..., 0::2] | (q[..., 1::2] << 4)   # uint8 in, uint8 out",
        mistakes=[
            Mistake("nibbles swapped", _pack_swapped,
                    "Even index in the LOW nibble: byte = q[2k] | (q[2k+1] << 4)."),
            Mistake("halves, not pairs", _pack_halves,
                    "Pack neighbours (positions 2k and 2k+1) into one byte, not the first "
                    "half with the second half."),
            Mistake("no shift", _pack_add_no_shift,
                    "The odd code must move to the high nibble: shift it left by 4 (x << 4, "
                    "i.e. times 16) before combining."),
            Mistake("int64, not uint8", _pack_int64,
                    "The values are right but the dtype is int64: eight bytes per packed "
                    "pair, sixteen times what int4 is for. Keep the codes uint8 (do not "
                    "convert with .long() or mix in Python ints that promote)."),
            Mistake("float, not uint8", _pack_float,
                    "The values are right but the answer is a float tensor: four bytes per "
                    "pair. Pack with integer operations on the uint8 codes."),
        ],
    ),
]
_BY_NAME = {e.name: e for e in (*_WARM_UPS, *_OUTLIERS, *_METHODS)}
# In the lab's order: the warm-ups (sections 2-4), LLM.int8() (5), GPTQ and AWQ (6), KIVI (8).
EXERCISES = [_BY_NAME[n] for n in ("absmax_quantize", "group_quantize", "pack_int4",
                                   "llm_int8_matmul", "gptq_quantize", "awq_scale_search",
                                   "kivi_quantize_keys")]

PREDICTIONS = [
    Prediction(
        "quant_int4_g64_bits_per_weight", LAB,
        "int4 codes in groups of 64 weights, one fp16 scale per group (no zero point): how "
        "many bits does each weight cost? (passing is within 0.01)",
        "bits/weight", abs_tol=0.01,
        explain="4 bits of code plus the group's 16-bit scale shared by 64 weights: "
                "4 + 16/64 = 4.25. A zero point would add 4/64 more; g128 costs 4.125."),
    Prediction(
        "quant_int4_g64_model_share", LAB,
        "The lab's model with its linear layers in int4-g64 (the embedding, tied to the output "
        "head, and the norms stay fp32): its stored size as a percentage of the fp32 model's "
        "(passing is within 3 percentage points)",
        "% of fp32", abs_tol=3.0,
        explain="The linear weights shrink from 32 to 4.25 bits (13%), but the fp32 "
                "embedding does not shrink at all: the share is (embedding x 32 + linears x "
                "4.25) / (all x 32). On code-m the 1.05 M-weight embedding is 15% of the "
                "parameters, so the model lands near 26%; on SmolLM2-135M it is 21%, near "
                "31%. Quantizing the head too ('+head') is what gets a model near 13%."),
    Prediction(
        "quant_fused_int4_speedup_batch1", LAB,
        "One token (batch 1) through a 768 x 3072 linear layer: how many times faster than "
        "fp32 is the fused int4 g64 layer? The bytes each reads are printed above the cell "
        "(passing is within 50% of the measured ratio: the machine decides this one)",
        "x fp32 speed", rel_tol=0.5,
        explain="If time followed the weight bytes alone, 9.4 MB against 1.3 MB would make "
                "int4 7x faster. It is less on a CPU: a 9.4 MB fp32 weight can sit in the "
                "last-level cache (so fp32 reads it faster than from DRAM), the int4 kernel "
                "spends instructions unpacking nibbles and applying scales, and a single "
                "call has a fixed overhead of a few microseconds."),
]
