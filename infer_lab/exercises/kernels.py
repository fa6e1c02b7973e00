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

Two predictions, about numbers that exist on a CPU too (counted bytes, not kernel times,
which the interpreter cannot give): how many times the fused RMSNorm's bytes the eager chain
moves, and the int4 GEMV's memory-bound speed-up over fp32 on one of code-m's layers.

Nothing here imports Triton: each exercise loads its kernel file and its wrong kernels
(:mod:`.kernels_mistakes`) on its first check.
"""

from __future__ import annotations

import torch

from . import catalog
from .checker import Mistake
from .kernel_checker import KernelExercise, KernelSpec
from .predictions import Prediction

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
                 "Your kernel exponentiates the logits without subtracting the row's max: "
                 "the same softmax on paper, but exp of a logit near 100 overflows fp32 "
                 "to inf, and inf / inf is NaN (the 'large' case). Shift the row by its "
                 "max first."),
         Mistake("padding read as 0", wrong.softmax_pad_zero,
                 "The lanes past n_cols are padding, and yours load as 0: each then adds "
                 "exp(0 - m) to the sum, so rows whose length is not a power of two come "
                 "out too small. Fill padding with minus infinity: it loses the max and "
                 "adds exp(-inf), which is 0."),
         Mistake("wrong sum", wrong.softmax_wrong_sum,
                 "Your denominator is the sum of the unshifted exponentials, off from the "
                 "numerator's by a factor e^m: divide by the sum of the same shifted terms "
                 "as the numerator."),
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
                 "When a tile raises the max, your running sum keeps the earlier terms "
                 "relative to the old max: rescale it by exp(m_old - m_new) before adding "
                 "the new tile's terms."),
         Mistake("max of one tile", wrong.online_tile_max,
                 "Your m is the current tile's max, not the max of every tile so far: a "
                 "logit far above the rest in an early tile (an attention sink) is "
                 "forgotten, and exp(x - m) overflows. Keep the larger of the running max "
                 "and the tile's."),
         Mistake("no running max", wrong.online_no_max,
                 "Your running sum adds exp(x) with no max subtracted: right for small "
                 "logits, but exp of a logit near 100 overflows fp32 to inf and the row "
                 "comes out NaN (the 'large' case). Keep a running max and sum exp(x - m)."),
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
                 "Your nibbles are swapped: code 2j is the LOW nibble of byte j and "
                 "multiplies x[2j]; code 2j+1 is the high nibble (our packing puts q[2j] "
                 "in the low four bits of the byte, q[2j+1] in the high four)."),
         Mistake("zero point forgotten", wrong.int4_no_zero,
                 "Your kernel scales the codes as stored, but they are unsigned: subtract "
                 "the zero point before scaling (the group's zero when HAS_ZERO, else 8, "
                 "the offset symmetric codes carry)."),
         Mistake("group of the byte", wrong.int4_group_of_byte,
                 "Your group index counts bytes, but a group is G codes (G / 2 bytes): "
                 "byte j holds codes 2j and 2j+1, so its group is (2j) // G, not j // G.")])

SOFTMAX_BOUNDS = ("BLOCK is the power of two at or above n_cols, so the lanes past n_cols "
                  "belong to the next row (or to no one): the load and the store both need "
                  "the mask of columns below n_cols, and the load a fill of minus infinity.")
ONLINE_BOUNDS = ("The last tile of each loop runs past n_cols, in the second loop too: "
                 "every tile's load and store need the mask of columns below n_cols.")

# Tier 1 (``hint``): the idea, no code. Tier 3 (``code_hint``): the lines, shown only after
# CODE_HINT_AFTER failed checks of the same kernel.
EXERCISES = [
    KernelExercise(
        "softmax_kernel", LAB, _softmax,
        hint="One program owns one row, and the whole row fits in one block. Load it masked, "
             "so that the lanes past n_cols read minus infinity (they must neither win the "
             "max nor add to the sum), and compute in fp32. Subtract the row's max before "
             "exponentiating (exp overflows fp32 above about 88), divide by the sum of the "
             "same shifted exponentials, and store the row under the same mask.",
        code_hint="x = tl.load(x_ptr + row * x_row_stride + cols, mask=cols < n_cols, "
                  "other=-float('inf')).to(tl.float32); num = tl.exp(x - tl.max(x, axis=0)); "
                  "y = num / tl.sum(num, axis=0); tl.store(y_ptr + row * y_row_stride + cols, "
                  "y.to(y_ptr.dtype.element_ty), mask=cols < n_cols)",
        bounds_hint=SOFTMAX_BOUNDS),
    KernelExercise(
        "online_softmax_kernel", LAB, _online_softmax,
        hint="Two passes over the row in tiles of BLOCK columns. The first keeps a running "
             "max m (of every tile so far, not only the current one) and a running sum l of "
             "exp(x - m); when a tile raises the max, the sum so far was taken against the "
             "old max, so scale it by exp(m_old - m_new) before adding the tile's terms. The "
             "second pass loads each tile again and stores exp(x - m) / l. Mask every tile "
             "to the columns below n_cols, loads filled with minus infinity, in fp32.",
        code_hint="First loop: x = tl.load(x_row + start + cols, mask=mask, "
                  "other=-float('inf')).to(tl.float32); m_new = tl.maximum(m, tl.max(x, "
                  "axis=0)); l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0); "
                  "m = m_new. Second loop: the same load, then tl.store(y_row + start + "
                  "cols, (tl.exp(x - m) / l).to(y_ptr.dtype.element_ty), mask=mask).",
        bounds_hint=ONLINE_BOUNDS),
    KernelExercise(
        "int4_gemv_kernel", LAB, _int4_gemv,
        hint="Byte j of a row of W holds two 4-bit codes: code 2j in its low nibble, code "
             "2j+1 in its high nibble, both in group (2j) // G. That group's scale s and "
             "zero point z (when HAS_ZERO; symmetric codes carry an offset of 8 instead) "
             "turn a code q into the weight (q - z) * s. Dequantize both halves in fp32, in "
             "registers, multiply each by its own activation (x[2j] or x[2j+1]) and add the "
             "sums over the tile's bytes into the accumulator.",
        code_hint="lo = (packed & 0xF).to(tl.float32); hi = (packed >> 4).to(tl.float32); "
                  "grp = (2 * offs_j) // G; s = tl.load(S + offs_n[:, None] * ssn + "
                  "grp[None, :] * ssg, mask=w_mask, other=0.0).to(tl.float32); z = 8.0, or "
                  "when HAS_ZERO the same load from Z with strides szn, szg; "
                  "acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2), and the "
                  "same for x_hi and hi."),
]

PREDICTIONS = [
    Prediction(
        "kernels_rmsnorm_traffic_ratio", LAB,
        "Eager RMSNorm is a chain of ops (pow, mean, + eps, rsqrt, two multiplies), each "
        "reading its input from memory and writing its output back; the fused kernel reads "
        "x and the weight once and writes y once. On the lab's fp32 input, how many times "
        "the fused kernel's bytes does the eager chain move? Within 20%.",
        "x (eager bytes / fused bytes)", rel_tol=0.2,
        explain="pow reads and writes the whole (rows, cols) tensor, and so do the two "
                "multiplies (the last one reads the weight too): three full reads and "
                "writes against the fused kernel's one. mean, + eps and rsqrt touch one "
                "number per row, almost nothing, so the ratio is close to 3.5. A "
                "memory-bound kernel runs at the speed of its bytes: that is the speed-up "
                "fusion can give it on a GPU."),
    Prediction(
        "kernels_int4_gemv_speedup_bound", LAB,
        "code-m's first MLP up-projection (256 inputs -> 704 outputs) quantized to int4 in "
        "groups of 64 input columns: symmetric codes, one fp16 scale per group. At batch 1 "
        "both GEMVs are memory-bound: how many times faster can the int4 layer be than the "
        "fp32 one (fp32 weight bytes / int4 bytes, codes and scales)? Within 15%.",
        "x (fp32 bytes / int4 bytes)", rel_tol=0.15,
        explain="An fp32 weight is 4 bytes; an int4 code is half a byte, plus a 2-byte "
                "scale per 64 codes (a quarter of a bit more per weight): 4 / 0.53, about "
                "7.5; a decode GEMV reaches it only if the kernel loads the codes and "
                "dequantizes in registers, as yours does, instead of building an fp32 "
                "weight first."),
]
