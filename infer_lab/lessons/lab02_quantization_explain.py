"""Small experiments and figures that explain lab 02's ideas one at a time.

* Number formats: the values int8, int4, NF4 (Dettmers et al. 2023) and FP8 E4M3
  (Micikevicius et al. 2022) can represent, on the range [-1, 1] a scale maps onto.
* Granularity: relative error ||W - W_hat|| / ||W|| per tensor, channel and group,
  against the bits per weight its scales cost.
* Outliers (Dettmers et al. 2022, LLM.int8()): one large activation column ruins a
  per-token absmax scale; splitting it out keeps the int8 matmul accurate.
* GPTQ (Frantar et al. 2022) and AWQ (Lin et al. 2023) against RTN on one layer: both
  aim at the layer *output* error ||X W^T - X W_hat^T||, not the weight error.

Where the bytes go (GGUF blocks, the KV cache, a dequantizing layer) is
:mod:`.lab02_quantization_storage`; the Pareto explorer is :mod:`.lab02_quantization`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from ..quant.catalog import eligible
from ..quant.primitives import quantize
from .figures import COLORS, layout


# -- number formats -----------------------------------------------------------------------
def number_grids() -> dict[str, torch.Tensor]:
    """Representable values of each format after its scale maps max|w| to 1 (sorted)."""
    from ..quant.fp8 import E4M3, decode_table
    from ..quant.nf4 import nf4_code

    fp8 = decode_table(E4M3)
    fp8 = torch.unique(fp8[torch.isfinite(fp8)]) / E4M3.max_value  # 253 values, -0 == 0
    return {"int8 (absmax)": torch.arange(-127, 128) / 127,
            "FP8 E4M3 (scaled)": fp8,
            "NF4 (QLoRA)": nf4_code(),
            "int4 (absmax)": torch.arange(-7, 8) / 7}


def number_grid_figure(grids: dict[str, torch.Tensor], weights: torch.Tensor | None = None
                       ) -> go.Figure:
    """One row of dots per format; above them a histogram of real weights, each divided by
    the absmax of its block of 64 (what a blockwise scale maps onto [-1, 1])."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.35, 0.65],
                        vertical_spacing=0.04)
    if weights is not None:
        blocks = weights.detach().float().reshape(-1, 64)  # (n_blocks, 64)
        norm = blocks / blocks.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        counts = torch.histc(norm, bins=100, min=-1, max=1)  # binned here: a layer has
        centers = torch.linspace(-1, 1, 101)[:-1] + 0.01  # too many weights to ship raw
        fig.add_trace(go.Bar(x=centers.tolist(), y=counts.tolist(), width=0.02,
                             name="weights / block absmax", marker_color="lightgray"),
                      row=1, col=1)
    for k, (name, vals) in enumerate(grids.items()):
        fig.add_trace(go.Scatter(x=vals.tolist(), y=[name] * len(vals), mode="markers",
                                 name=f"{name}: {len(vals)} values",
                                 marker={"size": 7, "color": COLORS[k], "symbol": "line-ns-open",
                                         "line": {"width": 2, "color": COLORS[k]}}),
                      row=2, col=1)
    layout(fig, "Where each format puts its values", "", "", height=460)
    fig.update_xaxes(title_text="value after scaling (max|w| = 1, unitless)", row=2, col=1)
    fig.update_yaxes(title_text="weights (count)", row=1, col=1)
    return fig


# -- granularity ---------------------------------------------------------------------------
def granularity_errors(model: nn.Module, bits: tuple[int, ...] = (8, 4, 3),
                       groups: tuple[int, ...] = (128, 64, 32)) -> list[dict]:
    """Relative weight error and bits per weight (fp16 scales) of RTN over every eligible
    linear of ``model``, per tensor, per channel and per group."""
    from .lab02_quantization import fit_group

    ws = [lin.weight.detach().float() for lin in eligible(model).values()]
    rows = []
    for b in bits:
        for label in ("tensor", "channel", *[f"g{g}" for g in groups]):
            err = ref = stored = n = 0.0
            for w in ws:
                gran = label if label in ("tensor", "channel") else "group"
                gs = fit_group(w.shape[1], int(label[1:])) if gran == "group" else None
                qt = quantize(w, b, gran, gs, scale_dtype=torch.float16)
                err += (w - qt.dequantize()).pow(2).sum().item()
                ref += w.pow(2).sum().item()
                stored += qt.bits_per_weight(16) * w.numel()
                n += w.numel()
            rows.append({"bits": b, "granularity": label, "bits_per_weight": stored / n,
                         "rel_error": math.sqrt(err / ref)})
    return rows


def granularity_figure(rows: list[dict]) -> go.Figure:
    """Error against storage: one line per bit width, from per-tensor to the finest group."""
    fig = go.Figure()
    for k, b in enumerate(dict.fromkeys(r["bits"] for r in rows)):
        rs = [r for r in rows if r["bits"] == b]
        fig.add_trace(go.Scatter(x=[r["bits_per_weight"] for r in rs],
                                 y=[r["rel_error"] for r in rs], mode="lines+markers+text",
                                 text=[r["granularity"] for r in rs], textposition="top right",
                                 name=f"{b} bits", line={"color": COLORS[k]}))
    layout(fig, "Granularity: finer scales, smaller error, more bits",
           "storage (bits per weight, codes + fp16 scales)",
           "relative weight error ||W - Ŵ|| / ||W|| (log)")
    fig.update_yaxes(type="log")
    return fig


# -- outliers and LLM.int8() ---------------------------------------------------------------
def outlier_matmul_errors(n_tokens: int = 16, d_in: int = 256, d_out: int = 256,
                          outlier: float = 60.0, seed: int = 0,
                          matmul: Callable | None = None) -> dict[str, float]:
    """Output error of an int8 x int8 matmul when input column 7 is an outlier feature
    (|x| ~ ``outlier`` in every token, the rest ~1): plain per-token absmax vs LLM.int8().
    matmul: (x, wq, cw, threshold) -> y, the decomposed int8 matmul (lab 02's exercise);
    None: :func:`infer_lab.quant.llm_int8.int8_matmul_decomposed`.

    Errors are relative to the output of the ordinary columns, ||X[:, ~7] W[:, ~7]^T||:
    the signal the outlier's scale crushes (the outlier's own term stays accurate).
    """
    from ..quant.llm_int8 import int8_matmul_decomposed

    matmul = matmul or int8_matmul_decomposed
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_in, generator=g)  # (T, in)
    w = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)  # (out, in)
    ordinary = torch.ones(d_in, dtype=torch.bool)
    ordinary[7] = False
    signal = (x[:, ordinary] @ w[:, ordinary].T).norm()  # output of the ordinary columns
    x_out = x.clone()
    x_out[:, 7] *= outlier  # one outlier feature dimension, in every token
    cw = w.abs().amax(1, keepdim=True)  # (out, 1)
    wq = torch.round(w * 127 / cw).to(torch.int8)  # (out, in)
    err = lambda xx, t: ((matmul(xx, wq, cw, t) - xx @ w.T).norm()
                         / signal).item()
    return {"no outlier, int8": err(x, math.inf),
            "outlier, int8 per-token absmax": err(x_out, math.inf),
            "outlier, LLM.int8() decomposition": err(x_out, 6.0)}


# -- GPTQ and AWQ against RTN on one layer -----------------------------------------------------
def calibrated_errors(w: torch.Tensor, x_calib: torch.Tensor, x_eval: torch.Tensor,
                      bits: int = 4, group_size: int = 64, awq_grid: int = 10,
                      gptq: Callable | None = None, awq: Callable | None = None,
                      damp: float = 0.01
                      ) -> tuple[dict[str, dict[str, float]], list[tuple[float, float]]]:
    """({method: {"weight": rel weight error, "output": rel output error on x_eval}},
    AWQ's search curve [(alpha, rel output error on x_calib)]) for W (out, in).

    The pluggable pieces (lab 02's exercises): ``gptq(W, H, bits, group_size) -> W_hat``,
    GPTQ's column loop, given W in float64 and the damped Hessian of x_calib (None: the
    package's :func:`gptq_quantize_weight`); ``awq(W, x, bits, group_size, grid, quantize)
    -> s``, AWQ's scale search on x_calib with this function's RTN (None: the search here).
    """
    from ..quant.awq import awq_scales
    from ..quant.gptq import gptq_quantize_weight, hessian

    w = w.detach().float()
    rtn = lambda m: quantize(m, bits, "group", group_size,
                             scale_dtype=torch.float16).dequantize()
    out_err = lambda wq, x: ((x @ (w - wq).T).norm() / (x @ w.T).norm()).item()
    stats = x_calib.abs().mean(0)  # (in,) mean |x| per input channel: AWQ's salience
    curve, best = [], (math.inf, None)
    for k in range(awq_grid):
        s = awq_scales(stats, k / awq_grid)  # (in,)
        wq = rtn(w * s) / s  # scale salient columns up before rounding, undo after
        e = out_err(wq, x_calib)
        curve.append((k / awq_grid, e))
        best = min(best, (e, k), key=lambda t: t[0])
    s = (awq_scales(stats, best[1] / awq_grid) if awq is None else
         awq(w, x_calib.float(), bits, group_size, awq_grid,
             lambda m, b, g: quantize(m, b, "group", g, scale_dtype=torch.float16
                                      ).dequantize()))  # (in,)
    w_awq = rtn(w * s) / s
    H = hessian(x_calib)  # (in, in) float64
    if gptq is None:
        w_gptq = gptq_quantize_weight(w, H, bits, group_size, damp=damp)[3]
    else:  # the same damping as the package's, then the given loop
        H = H + damp * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype)
        w_gptq = gptq(w.double(), H, bits, group_size).float()  # (out, in)
    res = {}
    for name, wq in (("RTN", rtn(w)), ("GPTQ", w_gptq), ("AWQ", w_awq)):
        res[name] = {"weight": ((w - wq).norm() / w.norm()).item(),
                     "output": out_err(wq, x_eval)}
    return res, curve


def gptq_steps(w: torch.Tensor, x: torch.Tensor, bits: int = 3, damp: float = 0.01
               ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """GPTQ the textbook way, one column at a time: (codes, per-row scales, W after each
    step). Same result as :func:`infer_lab.quant.gptq.gptq_quantize_weight` with one scale
    per row, which gets the rows of the shrinking H^-1 from one Cholesky factor instead of
    the update below."""
    from ..quant.gptq import hessian

    W = w.detach().double().clone()  # (out, in), rounded column by column
    H = hessian(x)  # (in, in)
    Hinv = torch.linalg.inv(H + damp * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype))
    s = quantize(W.float(), bits, "channel", scale_dtype=torch.float16).scale.double()[:, 0]
    qmax = 2 ** (bits - 1) - 1
    codes, snaps = torch.zeros_like(W), [W.clone()]
    for j in range(W.shape[1]):
        codes[:, j] = torch.round(W[:, j] / s).clamp(-qmax, qmax)  # (out,)
        err = (W[:, j] - s * codes[:, j]) / Hinv[j, j]  # (out,)
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]  # OBS: later columns absorb the error
        Hinv -= Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]  # column j leaves the problem
        snaps.append(W.clone())
    return codes, s, snaps


def gptq_steps_figure(snaps: list[torch.Tensor], row: int = 0) -> go.Figure:
    """One line per weight of a row: it moves while earlier columns are rounded (their
    error is pushed onto it), then stays on the grid once its own column is rounded."""
    vals = torch.stack([s[row] for s in snaps]).float()  # (steps + 1, in)
    fig = go.Figure()
    for k in range(vals.shape[1]):
        fig.add_trace(go.Scatter(x=list(range(len(snaps))), y=vals[:, k].tolist(),
                                 mode="lines+markers", name=f"w[{row}, {k}]",
                                 line={"color": COLORS[k % len(COLORS)]}))
    return layout(fig, f"GPTQ on row {row}: each step rounds one column, updates the rest",
                  "columns rounded so far (step)", "weight value (unitless)")


def calibrated_errors_figure(res: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars: weight error and held-out output error of each method."""
    fig = go.Figure()
    for k, (key, label) in enumerate((("weight", "weight error ||W - Ŵ|| / ||W||"),
                                      ("output", "output error ||X(W - Ŵ)ᵀ|| / ||XWᵀ||"))):
        fig.add_trace(go.Bar(x=list(res), y=[r[key] for r in res.values()], name=label,
                             marker_color=COLORS[k],
                             text=[f"{r[key]:.4f}" for r in res.values()], textposition="outside"))
    return layout(fig, "RTN vs GPTQ vs AWQ on one layer (4-bit, g64)", "method",
                  "relative error (unitless)", barmode="group")


def awq_curve_figure(curve: list[tuple[float, float]]) -> go.Figure:
    """AWQ's grid search: output error for each exponent alpha (alpha = 0 is plain RTN)."""
    fig = go.Figure(go.Scatter(x=[a for a, _ in curve], y=[e for _, e in curve],
                               mode="lines+markers", line={"color": COLORS[2]}))
    best = min(curve, key=lambda t: t[1])
    fig.add_trace(go.Scatter(x=[best[0]], y=[best[1]], mode="markers", name="chosen alpha",
                             marker={"size": 14, "symbol": "star", "color": "black"}))
    return layout(fig, "AWQ: searching the scale exponent on calibration inputs",
                  "alpha in s = mean|x|^alpha (unitless)",
                  "output error on calibration inputs (relative)", showlegend=False)
