"""Lab 03's closing widget: one perplexity-vs-speed plot, a toggle for the pruning scheme.

Every model the lab measured is a point (decode tokens/s, held-out perplexity); the toggle
picks a scheme (unstructured, 2:4, structured MLP pruning, structured + distillation) and
draws its points in colour, joined to the dense model, the others in grey behind. The
readout gives each of the scheme's points as multiples of the dense model's numbers:
unstructured and 2:4 move up (worse perplexity) without moving right on a CPU; removing
neurons moves right; distillation moves the structured point back down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as W
import plotly.graph_objects as go

from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


def scheme_figure(points: Mapping[str, tuple[float, float]], chosen: Sequence[str],
                  dense: str = "dense", title: str = "Pruning code-m: speed and quality"
                  ) -> go.Figure:
    """Perplexity (log) against decode tokens/s: ``chosen`` in colour joined to ``dense``,
    every other point in grey."""
    fig = go.Figure()
    others = [k for k in points if k not in chosen and k != dense]
    if others:
        fig.add_trace(go.Scatter(x=[points[k][0] for k in others], y=[points[k][1] for k in others],
                                 mode="markers+text", text=others, textposition="top center",
                                 marker={"size": 10, "color": "lightgrey"}, name="other schemes",
                                 textfont={"color": "grey"}))
    if dense in points:
        x0, y0 = points[dense]
        fig.add_trace(go.Scatter(x=[x0], y=[y0], mode="markers+text", text=[dense],
                                 textposition="bottom center", name=dense,
                                 marker={"size": 16, "symbol": "star", "color": "black"}))
    for k, label in enumerate(c for c in chosen if c in points):
        x, y = points[label]
        if dense in points:  # where the scheme took the dense model
            fig.add_trace(go.Scatter(x=[x0, x], y=[y0, y], mode="lines", showlegend=False,
                                     line={"color": COLORS[k % len(COLORS)], "dash": "dot"}))
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[label],
                                 textposition="top center", name=label,
                                 marker={"size": 14, "color": COLORS[k % len(COLORS)]}))
    layout(fig, title, "decode throughput (tokens/s, higher is better)",
           "held-out perplexity (log, lower is better)")
    fig.update_yaxes(type="log")
    return fig


class SchemeToggle(Explorer):
    """Toggle the pruning scheme; its points light up on one perplexity-vs-speed plot.

    points: {model label: (tokens/s, perplexity)}, as measured; schemes: {scheme: the
    labels of its models}; dense: the label of the unpruned model.
    """

    def __init__(self, points: Mapping[str, tuple[float, float]],
                 schemes: Mapping[str, Sequence[str]], dense: str = "dense",
                 title: str = "Pruning code-m: speed and quality"):
        missing = {lb for labels in schemes.values() for lb in labels} - set(points)
        if missing or dense not in points:
            raise ValueError(f"no measured point for {sorted(missing) or dense}")
        self.points, self.schemes, self.dense, self.title = dict(points), dict(schemes), dense, title
        self.scheme = W.ToggleButtons(options=list(schemes), description="scheme")
        self.controls = W.HBox([self.scheme])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.scheme)
        self.update()

    def update(self) -> None:
        chosen = self.schemes[self.scheme.value]
        swap_figure(self.figure, scheme_figure(self.points, chosen, self.dense, self.title))
        tps0, ppl0 = self.points[self.dense]
        rows = [f"<b>{lb}</b>: {self.points[lb][0] / tps0:.2f}x the dense speed, "
                f"{self.points[lb][1] / ppl0:.2f}x its perplexity" for lb in chosen]
        self.readout.value = "<br>".join(rows)
