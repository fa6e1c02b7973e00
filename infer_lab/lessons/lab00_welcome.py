"""Lab 00's figures and calculators: what a token costs, in time, memory and money.

* :func:`roofline_figure`: attainable FLOP/s = min(peak, intensity x bandwidth)
  (Williams et al. 2009), with the machine's measured roof beside spec sheets.
* :func:`latency_distribution_figure`: per-request latencies and their p50/p95/p99.
* :class:`ModelMemoryCalculator`: weight bytes = parameters x bits / 8 against a device.
* :class:`CostCalculator`: $ per 1M tokens = $/hour / (tokens/s x 3600) x 10^6.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ipywidgets as W
import plotly.graph_objects as go

from ..config import PRESETS
from .figures import COLORS, GB, layout
from .widgets import Explorer, device_memory_options, swap_figure

DTYPE_BITS = {"fp32": 32, "fp16/bf16": 16, "int8": 8, "int4": 4}


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
    layout(fig, f"Roofline ({dtype} peak where the device has it)",
           "arithmetic intensity (FLOP/byte, log)", "attainable performance (TFLOP/s, log)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def latency_distribution_figure(seconds: Sequence[float], metric: str = "end-to-end latency",
                                qs: Sequence[float] = (50, 95, 99), nbins: int = 30
                                ) -> go.Figure:
    """Histogram of per-request latencies (ms) with vertical lines at the percentiles."""
    from ..metrics import percentiles

    ms = [s * 1e3 for s in seconds]
    fig = go.Figure(go.Histogram(x=ms, nbinsx=nbins, name="requests",
                                 marker_color=COLORS[0], opacity=0.8))
    dashes = ["solid", "dash", "dot", "dashdot"]
    for k, (q, v) in enumerate(percentiles(ms, qs).items()):
        fig.add_vline(x=v, line={"color": COLORS[3 + k], "dash": dashes[k % 4], "width": 2},
                      annotation_text=f"p{q:g} = {v:.3g} ms", annotation_position="top right",
                      annotation_y=1 - 0.08 * k, annotation_yref="paper")
    return layout(fig, f"{metric} over {len(ms)} requests", f"{metric} (ms)",
                  "requests (count)", showlegend=False)


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
    layout(fig, title, "model", "weight memory (GB, log)", barmode="group")
    # An explicit range: autorange of a log axis with bar labels outside the bars
    # leaves no room for the labels.
    vals = [v / GB for m in sizes.values() for v in m.values() if v > 0]
    vals += [b / GB for b in (limits or {}).values()]
    if vals:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        fig.update_yaxes(range=[lo - 0.3, hi + 0.6])
    fig.update_yaxes(type="log", exponentformat="none")
    return fig


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
    layout(fig, "Cost per million output tokens", "throughput (tokens/s, log)",
           "cost ($ per 1M tokens, log)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


# -- calculators -----------------------------------------------------------------------
class ModelMemoryCalculator(Explorer):
    """Weight memory of real model shapes at fp32 / fp16 / int8 / int4 against a device.

    bytes = n_params * bits / 8 (scales and zero points of quantized formats ignored).
    """

    def __init__(self, models: Sequence[str] = ("code-m", "gpt2", "llama-3.2-1b",
                                                "llama-2-7b", "llama-3-8b", "llama-3-70b"),
                 device: str | None = None):
        self.devices = device_memory_options()
        self.models = W.SelectMultiple(options=list(PRESETS), value=tuple(models), rows=6,
                                       description="models")
        self.dtypes = W.SelectMultiple(options=list(DTYPE_BITS),
                                       value=tuple(DTYPE_BITS), rows=4,
                                       description="precision")
        self.device = W.Dropdown(options=list(self.devices),
                                 value=device or next(iter(self.devices)),
                                 description="device")
        self.controls = W.HBox([self.models, self.dtypes, self.device])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.models, self.dtypes, self.device)
        self.update()

    def sizes(self) -> dict[str, dict[str, float]]:
        return {m: {dt: PRESETS[m].n_params * DTYPE_BITS[dt] / 8 for dt in self.dtypes.value}
                for m in self.models.value}

    def update(self) -> None:
        sizes = self.sizes()
        limit = self.devices[self.device.value]
        swap_figure(self.figure, memory_bars_figure(sizes, {self.device.value: limit}))
        rows = []
        for m, by in sizes.items():
            fits = [dt for dt, b in by.items() if b <= limit]
            rows.append(f"<b>{m}</b> ({PRESETS[m].n_params / 1e9:.3g} B params): fits at "
                        f"{', '.join(fits) if fits else 'no precision shown'}")
        self.readout.value = "<br>".join(rows) + (
            f"<br><i>weights only, against {self.device.value}: "
            f"{limit / GB:.3g} GB</i>")


def model_memory_calculator(**kw) -> ModelMemoryCalculator:
    return ModelMemoryCalculator(**kw)


class CostCalculator(Explorer):
    """$ per 1M output tokens from a rental price ($/GPU-hour) and a throughput (tokens/s)."""

    def __init__(self, tokens_per_s: float, dollars_per_hour: float = 2.0):
        self.price = W.BoundedFloatText(value=dollars_per_hour, min=0, max=1000, step=0.1,
                                        description="$ / hour")
        self.tps = W.FloatLogSlider(value=tokens_per_s, base=10, min=0, max=5, step=0.05,
                                    description="tokens/s", readout_format=".4g")
        self.controls = W.HBox([self.price, self.tps])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.price, self.tps)
        self.update()

    @property
    def dollars_per_million(self) -> float:
        return self.price.value / (self.tps.value * 3600) * 1e6

    def update(self) -> None:
        swap_figure(self.figure, cost_figure(self.price.value, self.tps.value))
        self.readout.value = (f"<b>${self.dollars_per_million:.4g}</b> per 1M output tokens "
                              f"at {self.tps.value:.4g} tokens/s and ${self.price.value:.4g}"
                              " per hour (the machine busy 100% of the time)")


def cost_calculator(tokens_per_s: float, dollars_per_hour: float = 2.0) -> CostCalculator:
    return CostCalculator(tokens_per_s, dollars_per_hour)


# -- batching on the roofline ----------------------------------------------------------
def batching_points(cfg, hw, batches: Sequence[int], context: int, name: str
                    ) -> tuple[list[tuple[str, float, float]], float]:
    """Roofline markers (label, FLOP/byte, attainable FLOP/s) of a decode step at each
    batch size, and the intensity an unbounded batch tends to.

    bytes/step = weights + batch x context x KV bytes/token: the weights are shared by
    the batch, the KV cache is not. So intensity = batch x FLOPs/token / bytes/step
    rises with the batch only until the KV reads dominate, towards
    FLOPs/token / (context x KV bytes/token), which for long contexts sits below the ridge.
    """
    from ..hardware import roofline

    points = []
    for b in batches:
        r = roofline(cfg, batch=b, context=context, hw=hw)
        points.append((f"{name}, batch {b}", r.intensity,
                       r.flops_per_step / max(r.memory_time, r.compute_time)))
    r1 = roofline(cfg, batch=1, context=context, hw=hw)
    limit = r1.flops_per_token / (context * cfg.kv_bytes_per_token(2)) if context else math.inf
    return points, limit
