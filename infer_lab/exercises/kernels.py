"""Exercises of lab 07 (GPU kernels in Triton): the learner writes three ``@triton.jit``
kernels, each graded through its kernel file's wrapper (:mod:`.kernel_checker`).

* softmax_kernel: the fused row softmax, one program per row, the row in one block:
  ``y = exp(x - max x) / sum exp(x - max x)``, masked past ``n_cols`` (the signature of
  :func:`infer_lab.kernels.softmax._softmax_kernel`, launched by ``softmax_triton``).
* online_softmax_kernel: the same for rows longer than a block, tiles of BLOCK columns with
  a running max m and sum l, ``l = l * exp(m_old - m_new) + sum exp(x - m_new)``
  (Milakov & Gimelshein 2018; :mod:`infer_lab.kernels.online_softmax`).
* int4_gemv_kernel: the K loop of the weight-only int4 GEMV: unpack two codes per byte,
  dequantize ``w = (q - z) * s`` with the scale of the code's group, accumulate
  (:func:`infer_lab.kernels.quant_gemv._int4_gemv_kernel`).

Nothing here imports Triton: each exercise loads its kernel file and its wrong kernels
(:mod:`.kernels_mistakes`) on its first check.
"""

from __future__ import annotations

import torch

from . import catalog
from .checker import Mistake
from .kernel_checker import KernelExercise, KernelSpec

LAB = catalog.KERNELS  # the notebook's name
GUARD_ROWS, GUARD_COLS = 3, 37  # the bounds check's input: 37 is no multiple of a block


def _poison(case, pad: int):
    """The case with each contiguous input followed by ``pad`` NaNs, so that an unmasked
    load past the last row reads memory we own (and shows as NaN)."""
    from ..kernels.check import Case
    from ..kernels.vector_add import poisoned

    args = tuple(poisoned(a, pad) if isinstance(a, torch.Tensor) and a.is_contiguous() else a
                 for a in case.args)
    return Case(case.name, args, case.kwargs, case.atol, case.rtol)


def _softmax() -> KernelSpec:
    from ..kernels import online_softmax, softmax
    from . import kernels_mistakes as wrong

    def cases(seed, device):
        # The fused kernel's block is the next power of two of the row: < 2 rows of padding.
        return [_poison(c, 2 * max(c.args[0].shape[-1], 1)) for c in softmax.cases(seed, device)]

    return KernelSpec(
        softmax._softmax_kernel, softmax.softmax_reference,
        lambda k, x: softmax.softmax_triton(x, kernel=k), cases,
        [Mistake("no max subtracted", wrong.softmax_no_max,
                 "Subtracting the row max changes nothing mathematically, but exp does: "
                 "exp(100) overflows fp32 to inf, and inf / inf is NaN. Subtract "
                 "tl.max(x, axis=0) before tl.exp."),
         Mistake("padding read as 0", wrong.softmax_pad_zero,
                 "Lanes past n_cols are padding, and other=0.0 makes each add exp(0 - m) to "
                 "the sum (rows whose length is not a power of two come out too small). "
                 "Load them as -inf, other=-float('inf'): they lose the max and add exp(-inf) "
                 "= 0."),
         Mistake("wrong sum", wrong.softmax_wrong_sum,
                 "Divide by the sum of the same shifted exponentials as the numerator: "
                 "num = tl.exp(x - m); y = num / tl.sum(num, axis=0)."),
         Mistake("no mask", wrong.softmax_no_mask, SOFTMAX_BOUNDS)],
        bounds=lambda k, device: online_softmax.stores_outside_rows(
            k, GUARD_ROWS, GUARD_COLS, 64, device),
        bounds_case=f"{GUARD_ROWS} rows of {GUARD_COLS} columns, BLOCK 64")


def _online_softmax() -> KernelSpec:
    from ..kernels import online_softmax
    from . import kernels_mistakes as wrong

    return KernelSpec(
        online_softmax._online_softmax_kernel, online_softmax.online_softmax_reference,
        lambda k, x, block: online_softmax.online_softmax_triton(x, block=block, kernel=k),
        online_softmax.cases,
        [Mistake("sum not rescaled", wrong.online_no_rescale,
                 "When a tile raises the max, the sum so far was computed against the old "
                 "max: rescale it before adding the new tile's terms, l = l * tl.exp(m - "
                 "m_new) + tl.sum(tl.exp(x - m_new), axis=0)."),
         Mistake("max of one tile", wrong.online_tile_max,
                 "m must be the max of every tile seen so far, not of the current one: "
                 "m_new = tl.maximum(m, tl.max(x, axis=0)). A logit far above the rest in an "
                 "early tile (an attention sink) otherwise overflows exp(x - m)."),
         Mistake("second loop unmasked", wrong.online_unmasked_write, ONLINE_BOUNDS)],
        bounds=lambda k, device: online_softmax.stores_outside_rows(
            k, GUARD_ROWS, GUARD_COLS, 16, device),
        bounds_case=f"{GUARD_ROWS} rows of {GUARD_COLS} columns, BLOCK 16")


def _int4_gemv() -> KernelSpec:
    from ..kernels import quant_gemv
    from . import kernels_mistakes as wrong

    return KernelSpec(
        quant_gemv._int4_gemv_kernel, quant_gemv.int4_gemv_reference,
        lambda k, *args: quant_gemv.int4_gemv_triton(*args, kernel=k),
        lambda seed, device: quant_gemv.cases(4, seed, device),
        [Mistake("nibbles swapped", wrong.int4_nibbles_swapped,
                 "Code 2j is the LOW nibble and multiplies x[2j]; code 2j+1 is the high one "
                 "(our packing: byte = q[2j] | q[2j+1] << 4): lo = packed & 0xF, "
                 "hi = packed >> 4."),
         Mistake("zero point forgotten", wrong.int4_no_zero,
                 "Codes are stored unsigned: subtract the zero point before scaling, "
                 "w = (q - z) * s, with z the group's zero when HAS_ZERO, else 8 (symmetric "
                 "codes carry an offset of 8)."),
         Mistake("group of the byte", wrong.int4_group_of_byte,
                 "A group is G codes, and byte j holds codes 2j and 2j+1: its scale is in "
                 "column (2 * offs_j) // G of S, not offs_j // G.")])


SOFTMAX_BOUNDS = ("BLOCK is the power of two at or above n_cols, so the lanes past n_cols "
                  "belong to the next row (or to no one): give tl.load and tl.store "
                  "mask=cols < n_cols, and the load other=-float('inf').")
ONLINE_BOUNDS = ("The last tile of each loop runs past n_cols, in the second loop too: "
                 "mask the load and the store with start + cols < n_cols.")

EXERCISES = [
    KernelExercise(
        "softmax_kernel", LAB, _softmax,
        hint="One program owns one row. Load it masked (other=-float('inf')), in fp32; "
             "subtract its max, exponentiate, divide by the sum, store masked: "
             "num = tl.exp(x - tl.max(x, axis=0)); y = num / tl.sum(num, axis=0); "
             "tl.store(y_ptr + row * y_row_stride + cols, y, mask=cols < n_cols).",
        bounds_hint=SOFTMAX_BOUNDS),
    KernelExercise(
        "online_softmax_kernel", LAB, _online_softmax,
        hint="Two loops over tiles of BLOCK columns, from m = float('-inf') and l = 0.0. "
             "First: m_new = tl.maximum(m, tl.max(x, axis=0)); l = l * tl.exp(m - m_new) + "
             "tl.sum(tl.exp(x - m_new), axis=0); m = m_new. Second: store tl.exp(x - m) / l. "
             "Mask every tile with start + cols < n_cols (loads: other=-float('inf')).",
        bounds_hint=ONLINE_BOUNDS),
    KernelExercise(
        "int4_gemv_kernel", LAB, _int4_gemv,
        hint="Byte j of a row holds code 2j (low nibble, packed & 0xF) and code 2j+1 (high "
             "nibble, packed >> 4), both in group (2 * offs_j) // G. Load that group's scale "
             "s (and zero z when HAS_ZERO, else z = 8.0), dequantize (q - z) * s in fp32 and "
             "accumulate: acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2), "
             "and the same for hi."),
]
