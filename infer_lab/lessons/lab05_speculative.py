"""Lab 05's measurements, figures and widgets: speculative decoding on the zoo models.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a draft proposes k tokens,
the target scores all of them in one forward pass, each is kept with probability
min(1, p/q) and the first rejected one is replaced by a draw from norm(max(0, p - q)).
With per-token acceptance alpha and a draft step costing c target steps:

    speedup(alpha, k, c) = (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1))

Here: verification costs about one forward (:func:`time_forward`); alpha, c and the speedup
against k for several drafts, prompt lookup (Saxena 2023) among them (:func:`sweep`,
:class:`SpeedupExplorer`); where speculation pays at all (:func:`breakeven_figure`).
The distribution check is :mod:`.lab05_speculative_distribution`. The technique itself
lives in :mod:`infer_lab.speculative`; these modules only measure it. The lab's sizes are
``scale.speculative`` (:mod:`infer_lab.scale`), its prompts
:func:`infer_lab.zoo.data.held_out_prompts` and :func:`~infer_lab.zoo.data.edit_prompts`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ipywidgets as W
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..generate import Sampling, generate
from ..hardware import synchronize
from ..kv_cache import KVCache
from ..model import Transformer
from ..scale import SCALES, SpeculativeSizes, current_scale
from ..speculative import (PromptLookupDrafter, SpecStats, quantized_draft, speculative_decode,
                           theoretical_speedup)
from .figures import COLORS
from .widgets import Explorer, swap_figure

SIZES = {name: sc.speculative for name, sc in SCALES.items()}  # written in scale.py


def lab_sizes(scale_name: str | None = None) -> SpeculativeSizes:
    """The sizes for ``scale_name`` (default: the current INFER_LAB_SCALE)."""
    return current_scale(scale_name).speculative


# -- verification is one forward ------------------------------------------------------------
@torch.inference_mode()
def time_forward(model: Transformer, prompt: list[int], ns: Sequence[int], repeats: int = 3
                 ) -> list[float]:
    """Median seconds of one forward over n new tokens after a cached prompt, per n."""
    cache = KVCache.for_model(model, 1, len(prompt) + max(ns))
    model(torch.tensor([prompt], device=model.device), cache)  # prefill, untimed
    base, out = cache.length, []
    for n in ns:
        x = torch.tensor([prompt[:n]], device=model.device)  # (1, n): any n tokens will do
        secs = []
        for _ in range(repeats + 1):  # the first run warms up, untimed
            t0 = time.perf_counter()
            model(x, cache)
            synchronize(model.device)  # a GPU returns before the work is done
            secs.append(time.perf_counter() - t0)
            cache.rollback(base)
        out.append(statistics.median(secs[1:]))
    return out


def forward_cost_figure(ns: Sequence[int], secs: Sequence[float]) -> go.Figure:
    """One forward scoring n tokens, against n one-token decode steps."""
    fig = go.Figure([
        go.Scatter(x=list(ns), y=[s * 1e3 for s in secs], mode="lines+markers",
                   name="one forward over n tokens (verification)"),
        go.Scatter(x=list(ns), y=[n * secs[0] * 1e3 for n in ns], mode="lines",
                   name="n decode steps of one token", line={"dash": "dash"})])
    fig.update_layout(title="Scoring n tokens at once vs one at a time",
                      xaxis_title="tokens scored (n)", yaxis_title="time (ms)",
                      yaxis_rangemode="tozero",
                      template="plotly_white", height=400)
    return fig


# -- alpha, c and speedup against k ---------------------------------------------------------
def _untrained(target: Transformer, draft: Transformer) -> Transformer:
    with torch.random.fork_rng():  # fixed weights, without touching the caller's RNG
        torch.manual_seed(0)
        return Transformer(draft.config).to(target.device, target.dtype).eval()


# name -> how to build that draft from (target, trained small model)
DRAFTS: dict[str, Callable[[Transformer, Transformer], object]] = {
    "code-s": lambda target, draft: draft,
    "prompt lookup": lambda target, draft: PromptLookupDrafter(),
    "int8 self-draft": lambda target, draft: quantized_draft(target, "int8"),
    "untrained code-s": _untrained,
}


@dataclass
class SweepPoint:
    """One draft length k, measured over a set of prompts (theory from measured alpha, c)."""

    k: int
    alpha: float  # per-token acceptance probability
    acceptance_rate: float  # accepted / proposed: falls with k even at fixed alpha
    tokens_per_call: float  # measured tokens per target call
    c: float  # draft seconds per proposed token / plain seconds per token
    speedup: float  # plain seconds / speculative seconds
    by_position: list[float] = field(default_factory=list)

    @property
    def theory(self) -> float:
        return theoretical_speedup(self.alpha, self.k, self.c)

    @property
    def expected_tokens(self) -> float:
        a = self.alpha
        return self.k + 1.0 if a >= 1 else (1 - a ** (self.k + 1)) / (1 - a)


def measure_point(target: Transformer, drafter, prompts: list[list[int]], n_new: int, k: int,
                  sampling: Sampling, repeats: int) -> SweepPoint:
    """Speculative decoding at one k against plain decoding: alpha, c, tokens per call, speedup.

    Plain and speculative runs alternate, prompt by prompt, so a slowdown caused by other
    work on the machine hits both; each keeps its fastest of ``repeats`` runs (the least
    disturbed). c = draft seconds per proposed token / plain seconds per token.
    """
    total, plain, spent = SpecStats(), 0.0, 0.0
    for p in prompts:
        best_plain = best_spec = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate(target, [p], n_new, sampling)
            t1 = time.perf_counter()
            _, st = speculative_decode(target, drafter, p, n_new, k=k, sampling=sampling)
            t2 = time.perf_counter()
            best_plain = min(best_plain, t1 - t0)
            if t2 - t1 < best_spec:
                best_spec, best_stats = t2 - t1, st
        plain, spent = plain + best_plain, spent + best_spec
        total.add(best_stats)
    per_draft_token = total.draft_seconds / total.proposed if total.proposed else 0.0
    c = per_draft_token / (plain / (n_new * len(prompts)))
    return SweepPoint(k, total.alpha, total.acceptance_rate, total.tokens_per_target_call, c,
                      plain / spent, total.acceptance_by_position())


def sweep(target: Transformer, drafter, prompts: list[list[int]], ks: Sequence[int],
          n_new: int, sampling: Sampling, repeats: int, desc: str = "k") -> list[SweepPoint]:
    """One :class:`SweepPoint` per k, each against plain decoding timed alongside it."""
    from tqdm.auto import tqdm

    speculative_decode(target, drafter, prompts[0], 4, k=ks[0], sampling=sampling)  # warm-up
    return [measure_point(target, drafter, prompts, n_new, k, sampling, repeats)
            for k in tqdm(ks, desc=desc, leave=False)]


def points_table(points: Sequence[SweepPoint]) -> str:
    """A plain-text table of a sweep, measured next to the formulas."""
    from ..bench import format_table

    rows = [[f"k={p.k}", p.alpha, p.acceptance_rate, p.tokens_per_call, p.expected_tokens,
             p.c, p.speedup, p.theory] for p in points]
    return format_table(rows, ["", "alpha", "accepted/proposed", "tokens/call",
                               "(1-a^(k+1))/(1-a)", "c", "speedup", "theory"])


def speedup_figure(curves: dict[str, Sequence[SweepPoint]], k_selected: int | None = None
                   ) -> go.Figure:
    """Left: measured speedup (solid) and theory from measured alpha, c (dashed) against k.
    Right: alpha and the acceptance rate against k."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("speedup over plain decoding",
                                                        "acceptance against k"))
    for i, (label, pts) in enumerate(curves.items()):
        color, ks = COLORS[i % len(COLORS)], [p.k for p in pts]
        fig.add_trace(go.Scatter(x=ks, y=[p.speedup for p in pts], mode="lines+markers",
                                 name=f"{label}: measured", line={"color": color}), 1, 1)
        fig.add_trace(go.Scatter(x=ks, y=[p.theory for p in pts], mode="lines",
                                 name=f"{label}: theory", line={"color": color, "dash": "dash"}),
                      1, 1)
        fig.add_trace(go.Scatter(x=ks, y=[p.alpha for p in pts], mode="lines+markers",
                                 name=f"{label}: alpha", line={"color": color}), 1, 2)
        fig.add_trace(go.Scatter(x=ks, y=[p.acceptance_rate for p in pts], mode="lines",
                                 name=f"{label}: accepted/proposed",
                                 line={"color": color, "dash": "dot"}), 1, 2)
    fig.add_hline(y=1.0, line={"color": "gray", "width": 1}, row=1, col=1,
                  annotation_text="plain decoding")
    if k_selected is not None:
        fig.add_vline(x=k_selected, line={"color": "gray", "dash": "dot"})
    fig.update_xaxes(title_text="draft tokens per step (k)")
    fig.update_yaxes(title_text="speedup (x)", row=1, col=1)
    fig.update_yaxes(title_text="probability", range=[0, 1.05], row=1, col=2)
    fig.update_layout(template="plotly_white", height=450,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


class SpeedupExplorer(Explorer):
    """Sliders for k and temperature, a draft picker: measured vs theoretical speedup.

    Each (draft, temperature) is measured once for every k and kept in ``results``; the
    figure shows every draft measured at the current temperature.
    """

    def __init__(self, target: Transformer, draft: Transformer, prompts: list[list[int]],
                 sizes: SpeculativeSizes | dict, temperatures: Sequence[float] = (0.0, 0.5, 1.0)):
        self.target, self.small, self.prompts, self.sizes = target, draft, prompts, sizes
        self.results: dict[tuple[str, float], list[SweepPoint]] = {}
        self.drafters: dict[str, object] = {}
        self.draft = W.Dropdown(options=list(DRAFTS), value="code-s", description="draft")
        self.temperature = W.SelectionSlider(options=list(temperatures), value=temperatures[0],
                                             description="temperature",
                                             continuous_update=False)
        self.k = W.SelectionSlider(options=list(sizes["ks"]), value=sizes["ks"][0],
                                   description="k", continuous_update=False)
        self.controls = W.HBox([self.draft, self.temperature, self.k])
        self.readout, self.figure = W.HTML(), go.FigureWidget()
        self.wire(self.draft, self.temperature, self.k)
        self.update()

    def points(self, draft: str, temperature: float) -> list[SweepPoint]:
        """The sweep of one draft at one temperature (measured on first use)."""
        key = (draft, temperature)
        if key not in self.results:
            s = self.sizes
            sampling = Sampling(temperature=temperature, seed=0)
            if draft not in self.drafters:
                self.drafters[draft] = DRAFTS[draft](self.target, self.small)
            self.results[key] = sweep(self.target, self.drafters[draft], self.prompts,
                                      s["ks"], s["n_new"], sampling, s["repeats"],
                                      desc=f"{draft}, T={temperature}")
        return self.results[key]

    def update(self) -> None:
        T, k = self.temperature.value, self.k.value
        self.readout.value = "measuring..."
        pt = next(p for p in self.points(self.draft.value, T) if p.k == k)
        curves = {d: pts for (d, t), pts in self.results.items() if t == T}
        swap_figure(self.figure, speedup_figure(curves, k))
        pos = ", ".join(f"{a:.2f}" for a in pt.by_position)
        self.readout.value = (
            f"<b>{self.draft.value}</b>, k={k}, temperature {T:g}: alpha = {pt.alpha:.3f}, "
            f"c = {pt.c:.3f}, tokens per target call {pt.tokens_per_call:.2f} (formula "
            f"{pt.expected_tokens:.2f}); speedup <b>{pt.speedup:.2f}x</b> measured, "
            f"{pt.theory:.2f}x in theory<br>acceptance by draft position: {pos}")


def breakeven_figure(measured: dict[str, tuple[float, float, float]], k_max: int = 8
                     ) -> go.Figure:
    """Where speculation pays: the best theoretical speedup over k = 1..k_max for each
    (c, alpha), with the measured drafts on top. measured: {label: (alpha, c, speedup)}."""
    c_max = max([1.5] + [1.1 * c for _, c, _ in measured.values()])
    cs = [i * c_max / 60 for i in range(61)]  # 0 .. c_max
    alphas = [i * 0.02 for i in range(51)]  # 0 .. 1
    # log2, so that 2x faster and 2x slower get equally strong colours around white = 1x
    z = [[math.log2(max(theoretical_speedup(a, k, c) for k in range(1, k_max + 1)))
          for c in cs] for a in alphas]
    ticks = [-2, -1, -0.5, 0, 0.5, 1, 2]
    fig = go.Figure([
        go.Contour(x=cs, y=alphas, z=z, zmin=-2, zmax=2, zmid=0, colorscale="RdBu",
                   contours={"start": -2, "end": 2, "size": 0.25}, line={"width": 0},
                   colorbar={"title": "best speedup", "tickvals": ticks,
                             "ticktext": [f"{2 ** t:.2g}x" for t in ticks]},
                   hovertemplate="c %{x:.3f}, alpha %{y:.2f}<extra></extra>"),
        go.Contour(x=cs, y=alphas, z=z, showscale=False, hoverinfo="skip",
                   contours={"start": 0, "end": 0, "size": 1, "coloring": "lines"},
                   line={"color": "black", "width": 2, "dash": "dash"},
                   colorscale=[[0, "black"], [1, "black"]], name="break-even (1x)")])
    for i, (label, (a, c, s)) in enumerate(measured.items()):
        fig.add_trace(go.Scatter(x=[c], y=[a], mode="markers+text",
                                 text=[f"{label}: {s:.2f}x"], textposition="middle right",
                                 marker={"size": 11, "color": "black",
                                         "symbol": ["circle", "diamond", "square", "x"][i % 4]},
                                 name=label, showlegend=False))
    fig.update_layout(title=f"Best theoretical speedup over k = 1..{k_max} (blue pays, red is "
                            "slower; dashed: break-even), measured drafts at their best k",
                      xaxis_title="cost ratio c (draft step / target step)",
                      yaxis_title="acceptance alpha", template="plotly_white", height=480,
                      xaxis={"range": [-0.05, c_max * 1.2]}, yaxis={"range": [-0.05, 1.08]})
    return fig


def best_point(points: Sequence[SweepPoint]) -> SweepPoint:
    return max(points, key=lambda p: p.speedup)
