"""Lab 02's Pareto explorer: every quantization scheme by size, perplexity and speed.

Every scheme becomes a point (weight size, held-out perplexity, decode tokens/s). A point
p *dominates* q when it is no bigger and no worse (size_p <= size_q and ppl_p <= ppl_q);
the Pareto frontier is the set of points nothing dominates, the only schemes worth
picking (Pareto-optimal trade-offs, as in every quantization paper's size/quality plot).

The schemes come from :mod:`infer_lab.quant.catalog` (the same ones ``python -m
infer_lab.bench quant`` measures, with the same approach: perplexity of held-out token
ids, greedy decode with the contenders interleaved). The sliders add round-to-nearest
(RTN) points at any bits (2..8) and group size: 8 and 4 bits build real Int8Linear /
Int4Linear layers; other widths are *simulated* (weights quantized then stored back in
fp32, their size counted as packed codes + fp16 scales), so they have a perplexity and a
size but no speed of their own. ``quantizer`` (w, bits, group_size) -> dequantized w is
the pluggable rounding: given one (lab 02 hands in the learner's ``group_quantize`` once it
passes), every RTN point's perplexity comes from it, the real 8/4-bit layers still give
the size and the speed.

Why the real int8/int4 layers are slower than fp32 on a CPU at batch 1 is
:func:`.lab02_quantization_storage.time_linear`; the lab's smaller experiments are
:mod:`.lab02_quantization_explain`. The lab's sizes are ``scale.quantization``
(:mod:`infer_lab.scale`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from ..bench import format_table
from ..memory import return_freed_memory
from ..quality import heldout_ids
from ..quant.apply import Scheme, quantize_model
from ..quant.catalog import (
    METHOD_NAMES,
    Unavailable,
    build,
    eligible,
    linear_bits_per_weight,
    stored_bytes,
)
from ..quant.primitives import quantize
from ..scale import SCALES, QuantizationSizes, current_scale
from ..surgery import shared_copy
from ..timing import decode_tokens_per_s
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure

SIZES = {name: sc.quantization for name, sc in SCALES.items()}  # written in scale.py
Quantizer = Callable[[torch.Tensor, int, int], torch.Tensor]  # (w, bits, group) -> w_hat


def lab_sizes(scale_name: str | None = None) -> QuantizationSizes:
    """The sizes for ``scale_name`` (default: the current INFER_LAB_SCALE)."""
    return current_scale(scale_name).quantization


@dataclass(frozen=True)
class ParetoPoint:
    """One scheme on the trade-off: how big, how good, how fast."""

    name: str
    weight_bytes: int  # every stored byte of the model (codes, scales, fp32 embedding, norms)
    bits_per_weight: float  # quantized linears only: codes + scales over their weights
    ppl: float  # held-out perplexity
    tokens_per_s: float | None  # greedy decode at batch 1; None when simulated
    kind: str = "catalog"  # "catalog" | "rtn" (real int8/int4 modules) | "simulated"


def fit_group(in_features: int, group_size: int) -> int:
    """The largest halving of group_size that divides in_features (code-m's d_ff = 704
    takes no g128), the same fallback as the catalog's RTN schemes."""
    g = group_size
    while g > 1 and in_features % g:
        g //= 2
    return g


def rtn_name(bits: int, group_size: int) -> str:
    """The slider point's label; group_size 0 means per output channel."""
    return f"RTN int{bits}-{'channel' if not group_size else f'g{group_size}'}"


def rtn_model(fp: nn.Module, bits: int, group_size: int) -> nn.Module:
    """A quantized copy: real Int8Linear / Int4Linear layers (bits 8 or 4).
    group_size 0 means one scale per output channel."""
    scheme = Scheme(bits=bits, group_size=group_size or None)
    over = {}
    for n, lin in eligible(fp).items():
        g = fit_group(lin.in_features, group_size) if group_size else 0
        if g != group_size:
            over[n] = replace(scheme, group_size=g, overrides={})
    return quantize_model(shared_copy(fp), replace(scheme, overrides=over)).eval()


def simulated_rtn(fp: nn.Module, bits: int, group_size: int, quantizer: Quantizer | None = None
                  ) -> tuple[nn.Module, int, float]:
    """(copy with every eligible weight replaced by its b-bit RTN reconstruction, bytes the
    packed model would store, bits per weight). Codes pack at ``bits`` each, scales fp16.
    quantizer: rounds one weight, (w, bits, group_size) -> w_hat, group_size = in_features
    meaning one scale per row; None: the package's symmetric RTN with fp16 scales."""
    m = shared_copy(fp)  # each rounded weight becomes a new Parameter of the copy only
    n_weights, bits_stored = 0, 0
    for lin in eligible(m).values():
        g = fit_group(lin.in_features, group_size) if group_size else 0
        w = lin.weight.detach().float()  # (out, in)
        if quantizer is None:
            w_hat = quantize(w, bits, "group" if g else "channel", g or None,
                             scale_dtype=torch.float16).dequantize()
        else:
            w_hat = quantizer(w, bits, g or lin.in_features)
        lin.weight = nn.Parameter(w_hat, requires_grad=False)  # (out, in) rounded
        n_weights += w.numel()
        n_scales = lin.out_features * (lin.in_features // (g or lin.in_features))
        bits_stored += w.numel() * bits + n_scales * 16
    size = stored_bytes(fp) - 4 * n_weights + bits_stored // 8  # fp32 weights -> packed
    return m.eval(), size, bits_stored / n_weights


def pareto_front(points: Iterable[ParetoPoint], x: str = "bits_per_weight") -> list[ParetoPoint]:
    """The points no other point beats on both size and perplexity, smallest first."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (getattr(p, x), p.ppl)):
        if p.ppl < best:
            front.append(p)
            best = p.ppl
    return front


X_AXES = {"bits_per_weight": "quantized layers (bits per weight, log)",
          "weight_mb": "whole model (MB stored, log)"}


def pareto_figure(points: Sequence[ParetoPoint], x: str = "bits_per_weight",
                  highlight: str | None = None) -> go.Figure:
    """Size (log) against perplexity; colour = decode tokens/s; dashed = Pareto frontier."""
    xv = (lambda p: p.weight_bytes / 1e6) if x == "weight_mb" else (lambda p: p.bits_per_weight)
    hover = ("<b>%{text}</b><br>%{customdata[0]:.3g} MB, %{customdata[1]:.3g} bits/weight"
             "<br>perplexity %{y:.4g}<br>%{customdata[2]}<extra></extra>")
    fig = go.Figure()
    for measured in (True, False):
        ps = [p for p in points if (p.tokens_per_s is not None) == measured]
        if not ps:
            continue
        speed = [f"{p.tokens_per_s:.3g} tokens/s" if measured else "speed not measured "
                 "(simulated)" for p in ps]
        marker = ({"size": 13, "color": [p.tokens_per_s for p in ps], "colorscale": "Viridis",
                   "showscale": True, "colorbar": {"title": "decode<br>tokens/s"},
                   "line": {"width": 1, "color": "black"}} if measured else
                  {"size": 12, "color": "white", "line": {"width": 2, "color": "gray"}})
        fig.add_trace(go.Scatter(
            x=[xv(p) for p in ps], y=[p.ppl for p in ps], mode="markers+text",
            text=[p.name for p in ps], textposition="top center", textfont={"size": 10},
            customdata=[[p.weight_bytes / 1e6, p.bits_per_weight, s] for p, s in zip(ps, speed)],
            hovertemplate=hover, marker=marker,
            name="measured (colour: tokens/s)" if measured else "simulated bits (no speed)"))
    front = pareto_front(points, "weight_bytes" if x == "weight_mb" else "bits_per_weight")
    fig.add_trace(go.Scatter(x=[xv(p) for p in front], y=[p.ppl for p in front],
                             mode="lines", line={"dash": "dash", "color": COLORS[3]},
                             name="Pareto frontier", hoverinfo="skip"))
    if highlight is not None and any(p.name == highlight for p in points):
        p = next(p for p in points if p.name == highlight)
        fig.add_trace(go.Scatter(x=[xv(p)], y=[p.ppl], mode="markers", name="your setting",
                                 marker={"size": 22, "symbol": "star-open", "color": "black",
                                         "line": {"width": 2}}))
    layout(fig, "Size vs perplexity vs speed (code-m, batch 1)", X_AXES[x],
           "held-out perplexity (per token, lower is better)", height=520)
    fig.update_xaxes(type="log")
    ppl = [p.ppl for p in points]
    if ppl and max(ppl) > 3 * min(ppl):  # 2-bit RTN can be orders of magnitude worse
        fig.update_yaxes(type="log")
    fig.update_layout(legend={"orientation": "h", "y": -0.18})
    return fig


class ParetoExplorer(Explorer):
    """The catalog's schemes as Pareto points, plus an RTN point for the sliders' bits and
    group size (measured on first use, then cached in ``self.points``). ``quantizer``: the
    rounding the RTN points' perplexity comes from (see the module docstring)."""

    GROUPS = (("channel", 0), ("128", 128), ("64", 64), ("32", 32), ("16", 16))

    def __init__(self, model: nn.Module, tok, sizes: QuantizationSizes | None = None,
                 schemes: Sequence[str] | None = None, calib_ids: torch.Tensor | None = None,
                 bits: int = 3, group_size: int = 64, progress: bool = True,
                 quantizer: Quantizer | None = None):
        self.fp, self.sizes, self.progress = model.eval(), sizes or lab_sizes(), progress
        self.quantizer = quantizer
        self.ppl_ids = heldout_ids(tok, self.sizes.ppl_tokens)
        self.prompt = tok.encode("def read_config(path):")
        self.ctx = {"calib_ids": calib_ids, "group_size": 64,
                    "options": {"grid": self.sizes.awq_grid, "n_sample": self.sizes.awq_sample}}
        self.points: dict[str, ParetoPoint] = {}  # name -> measured point (the cache)
        self.skipped: dict[str, str] = {}  # name -> why it could not run here
        self.latest: str | None = None
        self.vs_fp32: dict[str, float] = {}  # slider point -> tokens/s over fp32's, same run
        style = {"description_width": "80px"}
        self.bits = W.IntSlider(value=bits, min=2, max=8, description="RTN bits",
                                continuous_update=False, style=style)
        self.group = W.SelectionSlider(options=self.GROUPS, value=group_size,
                                       description="group size", continuous_update=False,
                                       style=style)
        self.xaxis = W.ToggleButtons(options=[("bits/weight", "bits_per_weight"),
                                              ("MB", "weight_mb")], description="x axis")
        self.controls = W.HBox([self.bits, self.group, self.xaxis])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.measure_schemes(schemes or self.sizes.schemes or METHOD_NAMES)
        self.wire(self.bits, self.group)
        self.xaxis.observe(lambda _c: self.redraw(), names="value")
        self.update()

    def ppl(self, model: nn.Module) -> float:
        from ..quality import perplexity

        return perplexity(model, self.ppl_ids, seq_len=self.sizes.seq_len, progress=False).ppl

    def measure_schemes(self, names: Sequence[str]) -> None:
        """Build each catalog scheme, score its perplexity and time its decode alongside
        fp32's, then let it go: one quantized copy at a time, so that a real model's dozen
        schemes never sit in memory together (SmolLM2's would take 6 GB)."""
        import logging

        from tqdm.auto import tqdm

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # one line per matmul
        names = [n for n in names if n not in self.points]
        ids, fp_tps = list(eligible(self.fp)), []
        for name in tqdm(names, desc="build, perplexity, decode", disable=not self.progress):
            try:
                m = self.fp if name == "fp32" else build(self.fp, name, self.ctx)
                size, bpw, p = stored_bytes(m), linear_bits_per_weight(m, ids), self.ppl(m)
            except (Unavailable, ValueError, RuntimeError) as e:
                self.skipped[name] = f"{type(e).__name__}: {e}"
                continue
            # fp32 runs again alongside each scheme: a busy moment slows both, not one.
            tps = decode_tokens_per_s({name: m, "fp32": self.fp} if name != "fp32" else
                                      {name: m}, self.prompt, self.sizes.new_tokens,
                                      self.sizes.repeats, progress=False)
            fp_tps.append(tps["fp32"])
            self.vs_fp32[name] = tps[name] / tps["fp32"]
            self.points[name] = ParetoPoint(name, size, bpw, p, tps[name])
            del m  # the next scheme is built from fp32 again
            return_freed_memory()
        if "fp32" in self.points and fp_tps:  # every fp32 run of this call, not just one
            self.points["fp32"] = replace(self.points["fp32"],
                                          tokens_per_s=statistics.median(fp_tps))
            self.vs_fp32["fp32"] = 1.0

    def add_rtn(self, bits: int, group_size: int) -> ParetoPoint:
        """The RTN point for (bits, group_size), measured once then read from the cache."""
        name = rtn_name(bits, group_size)
        if name not in self.points:
            if bits in (8, 4):
                m = rtn_model(self.fp, bits, group_size)
                # fp32 runs again alongside: a busy machine slows both, not just one.
                tps = decode_tokens_per_s({name: m, "fp32": self.fp}, self.prompt,
                                          self.sizes.new_tokens, self.sizes.repeats,
                                          progress=False)
                self.vs_fp32[name] = tps[name] / tps["fp32"]
                tps = tps[name]
                size, bpw = stored_bytes(m), linear_bits_per_weight(m, list(eligible(self.fp)))
                if self.quantizer is not None:  # the same grid, rounded by the given function
                    m = simulated_rtn(self.fp, bits, group_size, self.quantizer)[0]
                self.points[name] = ParetoPoint(name, size, bpw, self.ppl(m), tps, "rtn")
            else:
                m, size, bpw = simulated_rtn(self.fp, bits, group_size, self.quantizer)
                self.points[name] = ParetoPoint(name, size, bpw, self.ppl(m), None, "simulated")
        return self.points[name]

    def update(self) -> None:
        self.readout.value = "measuring..."
        p = self.add_rtn(self.bits.value, self.group.value)
        self.latest = p.name
        self.redraw()
        fp = self.points.get("fp32")
        text = f"<b>{p.name}</b>: {p.bits_per_weight:.3g} bits/weight, {p.weight_bytes / 1e6:.3g} MB"
        if fp:
            text += (f" ({fp.weight_bytes / p.weight_bytes:.2f}x smaller than fp32), perplexity "
                     f"{p.ppl:.4g} ({100 * (p.ppl / fp.ppl - 1):+.2f}% vs fp32)")
        text += (f", {p.tokens_per_s:.3g} tokens/s ({self.vs_fp32[p.name]:.2f}x fp32 timed "
                 "alongside it)" if p.tokens_per_s is not None else
                 ", speed not measured (simulated: no packed kernel for this width here)")
        self.readout.value = text

    def redraw(self) -> None:
        swap_figure(self.figure, pareto_figure(list(self.points.values()), self.xaxis.value,
                                               self.latest))

    def table(self) -> str:
        """The measured points, fp32 first, as a plain-text table."""
        fp = self.points.get("fp32")
        rows = []
        for p in self.points.values():
            # the ratio to the fp32 run timed alongside it, where there was one
            ratio = None if p.tokens_per_s is None or fp is None else self.vs_fp32.get(
                p.name, p.tokens_per_s / fp.tokens_per_s)
            rows.append([p.name, p.weight_bytes / 1e6, p.bits_per_weight, p.ppl,
                         "n/a" if p.tokens_per_s is None else p.tokens_per_s,
                         "n/a" if ratio is None else f"{ratio:.2f}x"])
        out = format_table(rows, ["scheme", "MB", "bits/w", "ppl", "tokens/s", "vs fp32"])
        for name, why in self.skipped.items():
            out += f"\nnot run: {name}: {why}"
        return out
