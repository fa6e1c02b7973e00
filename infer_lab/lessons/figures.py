"""Figures more than one lab draws, and the conventions every lab's figures follow.

Every builder returns a ``plotly.graph_objects.Figure`` (no plotly.express, so no
pandas) with both axes titled *with units*, styled by :func:`layout`. Explorers
(:mod:`infer_lab.lessons.widgets`) show these figures in a ``go.FigureWidget`` and
redraw it in place.

Conventions: time in milliseconds on axes (seconds in code), memory in GB (10^9
bytes), bandwidth in GB/s, compute in TFLOP/s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

GB = 1e9
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, name) of the unit that shows ``max_bytes`` as a readable number."""
    for div, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if max_bytes >= div:
            return div, name
    return 1.0, "bytes"


def layout(fig: go.Figure, title: str, xtitle: str, ytitle: str, **kw) -> go.Figure:
    """Title the figure and its axes (units in the axis titles), in the labs' house style."""
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle,
                      template="plotly_white", height=kw.pop("height", 420),
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "v"}, **kw)
    return fig


def bar_figure(values: Mapping[str, float], title: str, ytitle: str,
               text_format: str = "{:.3g}", log_y: bool = False,
               colors: Sequence[str] | None = None) -> go.Figure:
    """One bar per label (e.g. cold vs warm call, prefill vs decode time)."""
    labels, ys = list(values), list(values.values())
    fig = go.Figure(go.Bar(x=labels, y=ys, text=[text_format.format(v) for v in ys],
                           textposition="outside",
                           marker_color=list(colors) if colors else COLORS[: len(ys)]))
    layout(fig, title, "", ytitle, showlegend=False)
    if log_y:
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
    return layout(fig, title, xtitle, ytitle, showlegend=False)


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
    layout(fig, title, "latency (ms)", "requests at or below (%)")
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0})
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
    return layout(fig, title, "tokens in the cache (tokens)", f"KV-cache memory ({unit})")
