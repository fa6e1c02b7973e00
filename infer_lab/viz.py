"""Plotly figures for the labs, built from numbers the labs measure.

Every builder returns a ``plotly.graph_objects.Figure`` (no plotly.express, so no
pandas) with both axes titled *with units*. Widgets (:mod:`infer_lab.widgets`) wrap these
figures in ``go.FigureWidget`` and update their traces in place.

Conventions: time in milliseconds on axes (seconds in code), memory in GB (10^9
bytes), bandwidth in GB/s, compute in TFLOP/s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

GB = 1e9
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]
DTYPE_BITS = {"fp32": 32, "fp16/bf16": 16, "int8": 8, "int4": 4}


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, name) of the unit that shows ``max_bytes`` as a readable number."""
    for div, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if max_bytes >= div:
            return div, name
    return 1.0, "bytes"


def _layout(fig: go.Figure, title: str, xtitle: str, ytitle: str, **kw) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle,
                      template="plotly_white", height=kw.pop("height", 420),
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "v"}, **kw)
    return fig


# -- roofline ---------------------------------------------------------------------------
def roofline_figure(specs: Sequence, dtype: str = "bf16",
                    points: Sequence[tuple[str, float, float]] = (),
                    intensity_range: tuple[float, float] = (0.1, 1000.0)) -> go.Figure:
    """Attainable FLOP/s against arithmetic intensity, one roof per HardwareSpec.

    attainable(I) = min(peak FLOP/s, I * bandwidth). Measured specs are solid and thick,
    spec-sheet ones dashed and labelled "(spec)". ``points`` are (label, intensity in
    FLOP/byte, achieved FLOP/s) markers, e.g. a measured decode step.
    """
    lo, hi = intensity_range
    n = 60
    xs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    fig = go.Figure()
    for k, hw in enumerate(specs):
        peak, bw = hw.flops(dtype), hw.bandwidth
        ridge = peak / bw
        x = sorted({*xs, ridge} if lo < ridge < hi else set(xs))
        y = [min(peak, i * bw) / 1e12 for i in x]
        measured = hw.source == "measured"
        label = f"{hw.name} ({'measured' if measured else 'spec'})"
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", name=label,
            line={"color": COLORS[k % len(COLORS)], "width": 4 if measured else 1.5,
                      "dash": "solid" if measured else "dash"},
            hovertemplate=(f"{label}<br>%{{x:.3g}} FLOP/byte → %{{y:.3g}} TFLOP/s<br>"
                           f"{hw.mem_bandwidth_gbs:.4g} GB/s, ridge {ridge:.3g} FLOP/byte"
                           "<extra></extra>")))
    for label, intensity, flops in points:
        fig.add_trace(go.Scatter(x=[intensity], y=[flops / 1e12], mode="markers+text",
                                 name=label, text=[label], textposition="top center",
                                 marker={"size": 12, "symbol": "diamond", "color": "black"}))
    _layout(fig, f"Roofline ({dtype} peak where the device has it)",
            "arithmetic intensity (FLOP/byte, log)", "attainable performance (TFLOP/s, log)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


# -- latency ----------------------------------------------------------------------------
def token_latency_figure(series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                         title: str = "Time per generated token") -> go.Figure:
    """Per-token time (ms) against the token's position in the sequence.

    series: {label: (positions, seconds per token)}.
    """
    fig = go.Figure()
    for k, (label, (pos, secs)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(pos), y=[s * 1e3 for s in secs], mode="lines+markers",
                                 name=label, marker={"size": 4},
                                 line={"color": COLORS[k % len(COLORS)]}))
    return _layout(fig, title, "position of the token in the sequence (tokens)",
                   "time for this token (ms)")


def latency_distribution_figure(seconds: Sequence[float], metric: str = "end-to-end latency",
                                qs: Sequence[float] = (50, 95, 99), nbins: int = 30
                                ) -> go.Figure:
    """Histogram of per-request latencies (ms) with vertical lines at the percentiles."""
    from .metrics import percentiles

    ms = [s * 1e3 for s in seconds]
    fig = go.Figure(go.Histogram(x=ms, nbinsx=nbins, name="requests",
                                 marker_color=COLORS[0], opacity=0.8))
    dashes = ["solid", "dash", "dot", "dashdot"]
    for k, (q, v) in enumerate(percentiles(ms, qs).items()):
        fig.add_vline(x=v, line={"color": COLORS[3 + k], "dash": dashes[k % 4], "width": 2},
                      annotation_text=f"p{q:g} = {v:.3g} ms", annotation_position="top right",
                      annotation_y=1 - 0.08 * k, annotation_yref="paper")
    return _layout(fig, f"{metric} over {len(ms)} requests", f"{metric} (ms)",
                   "requests (count)", showlegend=False)


def latency_cdf_figure(samples: Mapping[str, Sequence[float]],
                       title: str = "Latency CDF") -> go.Figure:
    """Empirical CDF (percent of requests at or below) of each series of latencies."""
    fig = go.Figure()
    for k, (label, secs) in enumerate(samples.items()):
        xs = sorted(s * 1e3 for s in secs)
        ys = [100 * (i + 1) / len(xs) for i in range(len(xs))]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=label,
                                 line={"color": COLORS[k % len(COLORS)]}))
    for q in (50, 95, 99):
        fig.add_hline(y=q, line={"color": "gray", "dash": "dot", "width": 1},
                      annotation_text=f"p{q}", annotation_position="right")
    _layout(fig, title, "latency (ms)", "requests at or below (%)")
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0})
    return fig


def bar_figure(values: Mapping[str, float], title: str, ytitle: str,
               text_format: str = "{:.3g}", log_y: bool = False,
               colors: Sequence[str] | None = None) -> go.Figure:
    """One bar per label (e.g. cold vs warm call, prefill vs decode time)."""
    labels, ys = list(values), list(values.values())
    fig = go.Figure(go.Bar(x=labels, y=ys, text=[text_format.format(v) for v in ys],
                           textposition="outside",
                           marker_color=list(colors) if colors else COLORS[: len(ys)]))
    _layout(fig, title, "", ytitle, showlegend=False)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def throughput_figure(lengths: Sequence[int], series: Mapping[str, Sequence[float]],
                      title: str = "Prefill vs decode throughput") -> go.Figure:
    """Tokens/s against sequence length, one line per phase."""
    fig = go.Figure()
    for k, (label, tps) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(lengths), y=list(tps), mode="lines+markers",
                                 name=label, line={"color": COLORS[k % len(COLORS)]}))
    _layout(fig, title, "tokens processed (tokens)", "throughput (tokens/s, log)")
    fig.update_yaxes(type="log")
    return fig


# -- memory -----------------------------------------------------------------------------
def memory_bars_figure(sizes: Mapping[str, Mapping[str, float]],
                       limits: Mapping[str, float] | None = None,
                       title: str = "Weight memory by precision") -> go.Figure:
    """Grouped bars: sizes[model][dtype] in bytes, shown in GB on a log axis.

    limits: {label: bytes} drawn as horizontal lines (a device's memory).
    """
    models = list(sizes)
    dtypes = list(dict.fromkeys(d for m in sizes.values() for d in m))
    fig = go.Figure()
    for k, dt in enumerate(dtypes):
        ys = [sizes[m].get(dt, math.nan) / GB for m in models]
        fig.add_trace(go.Bar(x=models, y=ys, name=dt, marker_color=COLORS[k % len(COLORS)],
                             text=[f"{y:.3g}" for y in ys], textposition="outside",
                             hovertemplate="%{x} " + dt + ": %{y:.3g} GB<extra></extra>"))
    for k, (label, b) in enumerate((limits or {}).items()):
        # Annotations on a log axis take log10 coordinates, so add_hline's own label
        # would land at 10^(GB): draw the line, then place its label by hand.
        fig.add_hline(y=b / GB, line={"color": "black", "dash": ["dash", "dot"][k % 2]})
        fig.add_annotation(x=0, xref="paper", xanchor="left", y=math.log10(b / GB),
                           yanchor="bottom", showarrow=False,
                           text=f"{label}: {b / GB:.3g} GB")
    _layout(fig, title, "model", "weight memory (GB, log)", barmode="group")
    # An explicit range: autorange of a log axis with bar labels outside the bars
    # leaves no room for the labels.
    vals = [v / GB for m in sizes.values() for v in m.values() if v > 0]
    vals += [b / GB for b in (limits or {}).values()]
    if vals:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        fig.update_yaxes(range=[lo - 0.3, hi + 0.6])
    fig.update_yaxes(type="log", exponentformat="none")
    return fig


def kv_growth_figure(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                     limits: Mapping[str, float] | None = None,
                     title: str = "KV-cache memory against context length",
                     marker: tuple[int, float] | None = None) -> go.Figure:
    """KV-cache bytes against tokens held, one line per model or setting.

    Memory is shown in GB, MB or KB, whichever reads best.

    curves: {label: (token counts, bytes)}; limits: {label: bytes} as horizontal lines;
    marker: (tokens, bytes) of the point a calculator is showing.
    """
    fig = go.Figure()
    top = max(v for _, b in curves.values() for v in b)
    div, unit = bytes_unit(max([top, *(limits or {}).values()]))
    for k, (label, (toks, b)) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(toks), y=[v / div for v in b], mode="lines",
                                 name=label, line={"color": COLORS[k % len(COLORS)]}))
    if marker is not None:
        fig.add_trace(go.Scatter(x=[marker[0]], y=[marker[1] / div], mode="markers",
                                 name="your setting",
                                 marker={"size": 12, "color": "black", "symbol": "x"}))
    for k, (label, b) in enumerate((limits or {}).items()):
        fig.add_hline(y=b / div, line={"color": "gray", "dash": ["dash", "dot"][k % 2]},
                      annotation_text=f"{label}: {b / GB:.3g} GB",
                      annotation_position="top left")
    return _layout(fig, title, "tokens in the cache (tokens)", f"KV-cache memory ({unit})")


def cost_figure(dollars_per_hour: float, tokens_per_s: float,
                tps_range: tuple[float, float] = (1.0, 1e5)) -> go.Figure:
    """$ per 1M output tokens against tokens/s at one hourly price, with the current point.

    cost = dollars_per_hour / (tokens_per_s * 3600) * 1e6: a line of slope -1 in log-log.
    """
    lo, hi = tps_range
    xs = [lo * (hi / lo) ** (i / 49) for i in range(50)]
    ys = [dollars_per_hour / (x * 3600) * 1e6 for x in xs]
    here = dollars_per_hour / (tokens_per_s * 3600) * 1e6
    fig = go.Figure([
        go.Scatter(x=xs, y=ys, mode="lines", name=f"${dollars_per_hour:.4g} per hour",
                   line={"color": COLORS[0]}),
        go.Scatter(x=[tokens_per_s], y=[here], mode="markers+text", name="this setting",
                   text=[f"${here:.3g} / 1M tokens"], textposition="top right",
                   marker={"size": 12, "color": "black"}),
    ])
    _layout(fig, "Cost per million output tokens", "throughput (tokens/s, log)",
            "cost ($ per 1M tokens, log)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def tradeoff_figure(points: Mapping[str, tuple[float, float]], title: str, xtitle: str,
                    ytitle: str) -> go.Figure:
    """One labelled marker per option, e.g. {strategy: (KV memory, time)}: the trade-off."""
    fig = go.Figure()
    for k, (label, (x, y)) in enumerate(points.items()):
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", name=label, text=[label],
                                 textposition="top center",
                                 marker={"size": 14, "color": COLORS[k % len(COLORS)]}))
    return _layout(fig, title, xtitle, ytitle, showlegend=False)
