"""Lab 02's outlier exercises: the learner builds LLM.int8()'s split and KIVI's key scales.

* llm_int8_matmul (Dettmers et al. 2022, LLM.int8()): x (N, in) times an int8 weight
  (codes ``wq`` (out, in), per-row absmax ``cw`` (out, 1), W ~ wq * cw / 127). Input columns
  where any token reaches |x| >= threshold go through a floating-point matmul with the
  dequantized weight columns; the rest is quantized per token (absmax over the ordinary
  columns only, x ~ xq * cx / 127), multiplied in integers and rescaled by cx * cw^T / 127^2.
  The same as ``infer_lab.quant.llm_int8.int8_matmul_decomposed`` (cross-checked).
* kivi_quantize_keys (Liu et al. 2024, KIVI): keys (..., T, D) quantized per CHANNEL over
  each complete group of G tokens (one absmax scale per channel and group, symmetric
  ``bits``-bit codes), the last T mod G tokens kept in full precision (a per-channel scale
  needs all G tokens); returns the keys as attention reads them, dequantized. The same as
  the int4 keys of ``infer_lab.quant.kv.QuantizedKVCache`` with fp16 scales
  (``scale_dtype``; cross-checked).
"""

from __future__ import annotations

import random

import torch

from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.QUANTIZATION


# -- references -------------------------------------------------------------------------
def llm_int8_matmul(x: torch.Tensor, wq: torch.Tensor, cw: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """x (N, in) @ W^T for W stored as int8 rows wq (out, in) with absmax cw (out, 1): the
    outlier columns (max_t |x| >= threshold) in floating point, the rest in int8 with
    per-token scales. Returns (N, out) in x's dtype."""
    outliers = (x.abs() >= threshold).any(dim=0)  # (in,)
    w = wq.float() * (cw / 127)  # (out, in): the dequantized weight, for the outliers only
    y = x[:, outliers] @ w[:, outliers].T  # (N, out) in floating point
    rest = x.masked_fill(outliers, 0.0)  # (N, in): the ordinary columns
    cx = rest.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)  # (N, 1): one per token
    xq = torch.round(rest * (127 / cx))  # (N, in) int8 codes, held as floats
    acc = xq.to(torch.int32) @ wq.to(torch.int32).T  # (N, out), exact integer sums
    return (y + acc.float() * (cx * cw.T) / 127**2).to(x.dtype)


def kivi_quantize_keys(k: torch.Tensor, group: int, bits: int,
                       scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Keys k (..., T, D) as KIVI stores them, dequantized: each complete group of ``group``
    tokens with one absmax scale per channel, the incomplete last group in full precision.
    scale_dtype: the precision the scales are stored in (the cache keeps fp16)."""
    T = k.shape[-2]
    full = T // group * group  # tokens in complete groups
    qmax = 2 ** (bits - 1) - 1
    g = k[..., :full, :].unflatten(-2, (T // group, group))  # (..., n_groups, G, D)
    s = g.abs().amax(dim=-2, keepdim=True) / qmax  # (..., n_groups, 1, D): per channel
    s = s.clamp(min=1e-8).to(scale_dtype).float()
    q = torch.round(g / s).clamp(-qmax, qmax)  # (..., n_groups, G, D)
    return torch.cat([(q * s).flatten(-3, -2).to(k.dtype), k[..., full:, :]], dim=-2)


# -- wrong LLM.int8() matmuls ---------------------------------------------------------------
def _int8(x, wq, cw, threshold, *, keep_outliers=True, scale_all=False, per_tensor=False,
          strict=False):
    big = x.abs() > threshold if strict else x.abs() >= threshold
    outliers = big.any(dim=0)
    w = wq.float() * (cw / 127)
    y = x[:, outliers] @ w[:, outliers].T
    rest = x.masked_fill(outliers, 0.0)
    src = x if scale_all else rest
    cx = (src.abs().amax() * torch.ones(len(x), 1) if per_tensor
          else src.abs().amax(dim=1, keepdim=True)).clamp(min=1e-8)
    xq = torch.round(rest * (127 / cx)).clamp(-127, 127)
    out = xq @ wq.float().T * (cx * cw.T) / 127**2
    return ((y if keep_outliers else 0) + out).to(x.dtype)


def _int8_outliers_dropped(x, wq, cw, threshold):
    return _int8(x, wq, cw, threshold, keep_outliers=False)


def _int8_scale_with_outliers(x, wq, cw, threshold):
    return _int8(x, wq, cw, threshold, scale_all=True)


def _int8_per_tensor(x, wq, cw, threshold):
    return _int8(x, wq, cw, threshold, per_tensor=True)


def _int8_strict(x, wq, cw, threshold):
    return _int8(x, wq, cw, threshold, strict=True)


# -- wrong KIVI key quantizers ----------------------------------------------------------------
def _kivi(k, group, bits, *, axis=-2, residual=True, grouped=True, qmax=None):
    T = k.shape[-2]
    full = T // group * group if residual else T
    qmax = qmax or 2 ** (bits - 1) - 1
    parts = []
    starts = range(0, full, group) if grouped else [0]
    for t0 in starts:
        t1 = min(t0 + group, full) if grouped else full
        chunk = k[..., t0:t1, :]
        s = (chunk.abs().amax(dim=axis, keepdim=True) / qmax).clamp(min=1e-8)
        parts.append(torch.round(chunk / s).clamp(-qmax, qmax) * s)
    return torch.cat([*parts, k[..., full:, :]], dim=-2)


def _kivi_per_token(k, group, bits):
    return _kivi(k, group, bits, axis=-1)


def _kivi_residual_quantized(k, group, bits):
    return _kivi(k, group, bits, residual=False)


def _kivi_no_groups(k, group, bits):
    return _kivi(k, group, bits, grouped=False)


def _kivi_pow2(k, group, bits):
    return _kivi(k, group, bits, qmax=2 ** (bits - 1))


# -- cases --------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def int8_case(n: int, d_in: int, d_out: int, outlier_cols: tuple[int, ...], seed: int,
              threshold: float = 6.0, magnitude: float = 20.0) -> Case:
    """Activations ~1 with a few outlier columns of size ``magnitude`` in one token each,
    and an int8 weight quantized per row."""
    g = _gen(seed)
    x = torch.randn(n, d_in, generator=g).clamp(-4, 4)  # (N, in): ordinary values < 6
    for c in outlier_cols:
        x[int(torch.randint(n, (1,), generator=g)), c] = magnitude  # one token reaches it
    w = torch.randn(d_out, d_in, generator=g)  # (out, in)
    cw = w.abs().amax(dim=1, keepdim=True)  # (out, 1)
    return Case((x, torch.round(w * 127 / cw).to(torch.int8), cw, threshold))


def _random_int8_case(rng: random.Random) -> Case:
    d_in = rng.randint(4, 48)
    cols = tuple(rng.sample(range(d_in), rng.randint(1, min(3, d_in - 1))))
    return int8_case(rng.randint(1, 8), d_in, rng.randint(1, 16), cols, rng.randrange(2**31),
                     magnitude=rng.choice([8.0, 30.0, 100.0]))


def _threshold_case() -> Case:
    """A value exactly at the threshold: it counts as an outlier (>=)."""
    c = int8_case(3, 8, 4, (), 7)
    x = c.args[0].clone()
    x[1, 5] = 6.0
    return Case((x, *c.args[1:]))


def kivi_case(shape: tuple[int, ...], group: int, bits: int, seed: int) -> Case:
    """Keys (..., T, D) with two outlier channels, as KIVI found in real keys."""
    k = torch.randn(*shape, generator=_gen(seed))
    k[..., :, 1] *= 8  # a channel that is large in every token
    k[..., :, -1] += 3
    return Case((k, group, bits))


def _random_kivi_case(rng: random.Random) -> Case:
    g = rng.choice([2, 4, 8])
    lead = rng.choice([(), (2,), (1, 2)])
    return kivi_case((*lead, rng.randint(1, 4 * g), rng.randint(2, 12)), g, rng.choice([2, 4, 8]),
                     rng.randrange(2**31))


EXERCISES = [
    Exercise(
        "llm_int8_matmul", LAB, llm_int8_matmul,
        fixed_cases=[int8_case(4, 8, 3, (2,), 0), int8_case(2, 16, 4, (0, 9), 1),
                     int8_case(6, 32, 8, (), 2), _threshold_case(),
                     int8_case(16, 64, 16, (7, 30, 31), 3, magnitude=60.0)],
        random_case=_random_int8_case, n_random=16,
        rtol=1e-5, atol=1e-4, kind="technique",
        hint="Find the outlier input columns: those where any token's magnitude reaches the "
             "threshold (at or above it). Multiply those columns in floating point with the "
             "dequantized weight columns. Quantize what is left per token, with a scale from "
             "each token's largest magnitude over the ordinary columns only, multiply the codes "
             "in integers, rescale by the token's and the weight row's scales, and add the two "
             "parts.",
        code_hint="o = (x.abs() >= threshold).any(0); w = wq.float() * cw / 127; "
                  "y = x[:, o] @ w[:, o].T; rest = x.masked_fill(o, 0); "
                  "cx = rest.abs().amax(1, keepdim=True).clamp(min=1e-8); "
                  "xq = torch.round(rest * 127 / cx); "
                  "acc = xq.to(torch.int32) @ wq.to(torch.int32).T; "
                  "return y + acc.float() * cx * cw.T / 127**2",
        mistakes=[
            Mistake("outlier columns dropped", _int8_outliers_dropped,
                    "The outlier columns leave the int8 part but not the answer: add their "
                    "product with the dequantized weight columns, in floating point."),
            Mistake("token scale includes the outliers", _int8_scale_with_outliers,
                    "Each token's scale must come from its ordinary columns only: with the "
                    "outlier in the absmax, the ordinary values collapse onto a few codes, "
                    "the very damage the split exists to avoid."),
            Mistake("one scale for all tokens", _int8_per_tensor,
                    "The activations get one scale per token (row), not one for the whole "
                    "matrix."),
            Mistake("threshold is strict", _int8_strict,
                    "A column is an outlier when a magnitude reaches the threshold: at or "
                    "above it, not only strictly above."),
        ],
    ),
    Exercise(
        "kivi_quantize_keys", LAB, kivi_quantize_keys,
        fixed_cases=[kivi_case((8, 4), 4, 4, 0), kivi_case((10, 4), 4, 4, 1),
                     kivi_case((3, 6), 4, 4, 2), kivi_case((2, 12, 8), 4, 2, 3),
                     kivi_case((1, 2, 33, 16), 8, 4, 4)],
        random_case=_random_kivi_case, n_random=16,
        rtol=1e-5, atol=1e-6, kind="technique",
        hint="Keys have outlier channels, so each channel gets its own scale: split the tokens "
             "into consecutive groups of G, and within each complete group take every "
             "channel's largest magnitude over the G tokens. Quantize to the symmetric grid "
             "and dequantize. The tokens of the last, incomplete group stay as they are: "
             "their group's scale cannot be known until all G tokens have arrived.",
        code_hint="full = T // group * group; "
                  "g = k[..., :full, :].unflatten(-2, (T // group, group)); "
                  "s = g.abs().amax(dim=-2, keepdim=True) / qmax (clamp min 1e-8); "
                  "q = torch.round(g / s).clamp(-qmax, qmax); "
                  "return torch.cat([(q * s).flatten(-3, -2), k[..., full:, :]], dim=-2)",
        mistakes=[
            Mistake("per token, not per channel", _kivi_per_token,
                    "That is per-token quantization, what KIVI does to the VALUES. Keys get one "
                    "scale per channel: the absmax over the group's tokens, for each channel."),
            Mistake("residual quantized", _kivi_residual_quantized,
                    "The last T mod G tokens form an incomplete group: KIVI keeps them in full "
                    "precision until G tokens have arrived."),
            Mistake("one group for all tokens", _kivi_no_groups,
                    "Each group of G consecutive tokens has its own per-channel scales; one "
                    "scale per channel over the whole context lets one token set it for all."),
            Mistake("2^(b-1) levels", _kivi_pow2,
                    "The symmetric grid has qmax = 2**(bits-1) - 1 (7 at 4 bits)."),
        ],
    ),
]
