"""Lab 06's figures and widgets: batching timelines, block tables, load curves.

* :func:`timeline_figure`: one row per request, one column per engine step, coloured
  by what the request did (Orca's iteration-level view, Yu et al. 2022): the gaps and
  padding of request-level batching against continuous batching.
* :func:`block_table_figure`: PagedAttention's block tables (Kwon et al. 2023), each
  sequence's logical blocks mapped to physical ones, and the pool; blocks held by more
  than one sequence are a shared prompt prefix (prefix caching; SGLang's RadixAttention,
  Zheng et al. 2023, shares the same way through a tree).
* :func:`load_figure`: throughput and p50/p99 latency against the arrival rate.
* :class:`BlockTableExplorer`, :class:`LoadExplorer`: sliders that redraw them.

Figures follow :mod:`.figures` (graph_objects only, axes with units, ms on axes). The
traces they draw come from :mod:`.lab06_serving_trace`; how attention reads the paged pool
is :mod:`.lab06_serving_reads`. The lab's sizes are ``scale.serving`` (:mod:`infer_lab.scale`).
"""

from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..scale import SCALES, ServingSizes, current_scale
from .figures import COLORS, latency_cdf_figure, layout
from .lab06_serving_trace import BlockSnapshot, RunStats, Trace
from .widgets import Explorer, swap_figure

SIZES = {name: sc.serving for name, sc in SCALES.items()}  # written in scale.py


def lab_sizes(scale_name: str | None = None) -> ServingSizes:
    """The sizes for ``scale_name`` (default: the current INFER_LAB_SCALE)."""
    return current_scale(scale_name).serving


STATE_COLORS = {"idle": "#ffffff", "waiting": "#d9d9d9", "prefill": "#ff7f0e",
                "decode": "#1f77b4", "padding": "#f4a6a6", "preempted": "#000000"}
BLOCK_COLORS = {"free": "#eeeeee", "cached": "#c7e9c0", "private": "#6baed6",
                "shared": "#e6550d"}


def _discrete_scale(colors: list[str]) -> list[list]:
    """A heatmap colorscale that maps integer k in [0, len) to colors[k] exactly."""
    n, scale = len(colors), []
    for k, c in enumerate(colors):
        scale += [[k / n, c], [(k + 1) / n, c]]
    return scale


def _legend(fig: go.Figure, colors: dict[str, str], skip: tuple[str, ...] = (), **where
            ) -> None:
    """Heatmaps have no per-value legend: add one invisible marker per category."""
    for name, c in colors.items():
        if name not in skip:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                     marker={"size": 12, "color": c, "symbol": "square",
                                             "line": {"color": "#888", "width": 1}}),
                          **where)


# -- timelines --------------------------------------------------------------------------
def timeline_matrix(trace: Trace) -> list[list[str]]:
    """State of each request (rows, in arrival order) at each tick (columns)."""
    return [[tick.get(s.seq_id, "idle") for tick in trace.states] for s in trace.seqs]


def timeline_figure(traces: dict[str, Trace], title: str = "Requests over engine steps"
                    ) -> go.Figure:
    """One panel per batching policy: requests down, steps across, coloured by state."""
    names = list(STATE_COLORS)
    fig = make_subplots(rows=len(traces), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"{label}: {t.num_ticks} steps"
                                        for label, t in traces.items()])
    for row, trace in enumerate(traces.values(), start=1):
        m = timeline_matrix(trace)
        fig.add_trace(go.Heatmap(
            z=[[names.index(s) for s in r] for r in m], text=m, zmin=-0.5,
            zmax=len(names) - 0.5, colorscale=_discrete_scale(list(STATE_COLORS.values())),
            showscale=False, xgap=1, ygap=1,
            y=[f"req {i}" for i in range(len(m))],
            hovertemplate="%{y}, step %{x}: %{text}<extra></extra>"), row=row, col=1)
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    _legend(fig, STATE_COLORS, skip=("idle",), row=1, col=1)
    layout(fig, title, "", "", height=max(260 * len(traces), 360))  # before axis titles
    fig.update_yaxes(title_text="request")
    fig.update_xaxes(title_text="engine step (tick)", row=len(traces), col=1)
    return fig


def step_time_figure(traces: dict[str, Trace], title: str = "Duration of each step"
                     ) -> go.Figure:
    """Wall time of every step (ms), one line per configuration."""
    fig = go.Figure()
    for k, (label, t) in enumerate(traces.items()):
        fig.add_trace(go.Scatter(y=[s * 1e3 for s in t.seconds], mode="lines+markers",
                                 name=label, marker={"size": 4},
                                 line={"color": COLORS[k % len(COLORS)]}))
    return layout(fig, title, "engine step (tick)", "step duration (ms)")


def blocks_figure(trace: Trace, title: str = "KV blocks held after each step") -> go.Figure:
    """Blocks in use per step against the pool size, with the preemptions marked."""
    used = [sum(1 for r in s.ref_counts if r) for s in trace.snapshots]
    total = trace.snapshots[0].num_blocks
    pre = [(i, used[i]) for i, st in enumerate(trace.states) if "preempted" in st.values()]
    fig = go.Figure(go.Scatter(y=used, mode="lines", name="blocks in use",
                               line={"color": COLORS[0]}))
    fig.add_hline(y=total, line={"color": "gray", "dash": "dash"},
                  annotation_text=f"pool: {total} blocks", annotation_position="top left")
    if pre:
        fig.add_trace(go.Scatter(x=[i for i, _ in pre], y=[u for _, u in pre], mode="markers",
                                 name="preemption", marker={"size": 10, "color": "black",
                                                            "symbol": "x"}))
    return layout(fig, title, "engine step (tick)", "KV blocks held (blocks)")


# -- block tables -----------------------------------------------------------------------
def block_states(snap: BlockSnapshot) -> list[str]:
    """Per physical block: free, cached (free, prefix still findable), private, shared."""
    out = []
    for bid, ref in enumerate(snap.ref_counts):
        if ref > 1:
            out.append("shared")
        elif ref == 1:
            out.append("private")
        else:
            out.append("cached" if bid in snap.cached_free else "free")
    return out


def block_table_figure(snap: BlockSnapshot, title: str = "Block tables and the KV pool",
                       pool_cols: int = 16) -> go.Figure:
    """Left: each running sequence's block table; right: the physical pool.

    A table cell shows the physical block id that holds logical block j of the sequence;
    shared cells (reference count > 1) are prefix blocks several requests point to.
    """
    states = block_states(snap)
    names = list(BLOCK_COLORS)
    scale = _discrete_scale(list(BLOCK_COLORS.values()))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.08,
                        subplot_titles=["block table per sequence (cell = physical block)",
                                        (f"physical pool: {snap.num_blocks} blocks of "
                                         f"{snap.block_size} tokens")])
    width = max((len(t) for t in snap.tables.values()), default=1)
    z, text, hover, rows = [], [], [], []
    for sid, table in snap.tables.items():
        rows.append(f"seq {sid} ({snap.tokens[sid]} tok)")
        z.append([names.index(states[b]) for b in table] + [None] * (width - len(table)))
        text.append([str(b) for b in table] + [""] * (width - len(table)))
        hover.append([f"block {b}: {states[b]}, held by {snap.ref_counts[b]}" for b in table]
                     + [""] * (width - len(table)))
    fig.add_trace(go.Heatmap(z=z or [[None]], text=text or [[""]], customdata=hover or [[""]],
                             texttemplate="%{text}", y=rows or ["(none running)"],
                             colorscale=scale, zmin=-0.5, zmax=len(names) - 0.5,
                             showscale=False, xgap=2, ygap=2,
                             hovertemplate="%{y}, logical block %{x}: %{customdata}"
                                           "<extra></extra>"), row=1, col=1)
    n_rows = -(-snap.num_blocks // pool_cols)
    pz = [[None] * pool_cols for _ in range(n_rows)]
    pt = [[""] * pool_cols for _ in range(n_rows)]
    for bid, st in enumerate(states):
        pz[bid // pool_cols][bid % pool_cols] = names.index(st)
        pt[bid // pool_cols][bid % pool_cols] = f"block {bid}: {st}, refs {snap.ref_counts[bid]}"
    fig.add_trace(go.Heatmap(z=pz, text=pt, colorscale=scale, zmin=-0.5,
                             zmax=len(names) - 0.5, showscale=False, xgap=2, ygap=2,
                             hovertemplate="%{text}<extra></extra>"), row=1, col=2)
    _legend(fig, BLOCK_COLORS, row=1, col=1)
    layout(fig, title, "", "", height=max(380, 28 * len(rows) + 160))  # before axis titles
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="logical block (tokens / block size)", row=1, col=1)
    fig.update_xaxes(title_text=f"block id mod {pool_cols}", row=1, col=2)
    fig.update_yaxes(title_text=f"block id // {pool_cols}", row=1, col=2)
    return fig


class BlockTableExplorer(Explorer):
    """A slider over the steps of a trace; the block-table picture follows it."""

    def __init__(self, trace: Trace, step: int | None = None):
        self.trace = trace
        last = trace.num_ticks - 1
        self.step = W.IntSlider(value=last // 2 if step is None else step, min=0, max=last,
                                description="step", continuous_update=False)
        self.controls, self.readout = self.step, W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.step)
        self.update()

    def update(self) -> None:
        t = self.step.value
        snap = self.trace.snapshots[t]
        swap_figure(self.figure, block_table_figure(snap, f"Block tables after step {t}"))
        st = block_states(snap)
        held = {sid: len(tb) for sid, tb in snap.tables.items()}
        waste = sum(len(tb) * snap.block_size - snap.tokens[sid]
                    for sid, tb in snap.tables.items())
        self.readout.value = (
            f"step {t}: {len(held)} running, {snap.num_blocks - st.count('free') - st.count('cached')}"
            f"/{snap.num_blocks} blocks held ({st.count('shared')} shared, "
            f"{st.count('cached')} free but still cached); empty slots in last blocks: {waste}")


# -- load -------------------------------------------------------------------------------
def load_figure(sweep: dict[str, list[RunStats]], metric: str = "ttft",
                highlight: float | None = None) -> go.Figure:
    """Throughput (left) and p50/p99 latency (right) against the arrival rate."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["throughput",
                                        f"{metric.upper()} p50 (solid), p99 (dotted)"])
    for k, (label, runs) in enumerate(sweep.items()):
        c, x = COLORS[k % len(COLORS)], [r.rate for r in runs]
        fig.add_trace(go.Scatter(x=x, y=[r.throughput for r in runs], mode="lines+markers",
                                 name=label, legendgroup=label, line={"color": c}), 1, 1)
        for q, dash in ((50, "solid"), (99, "dot")):
            fig.add_trace(go.Scatter(x=x, y=[r.p(metric, q) * 1e3 for r in runs],
                                     mode="lines+markers", name=f"{label} p{q}",
                                     legendgroup=label, showlegend=False,
                                     line={"color": c, "dash": dash}), 1, 2)
    if highlight is not None:
        for col in (1, 2):
            fig.add_vline(x=highlight, line={"color": "gray", "dash": "dash"}, row=1, col=col)
    layout(fig, "Throughput and latency as the arrival rate rises", "", "")
    fig.update_xaxes(title_text="arrival rate (requests/s)")
    fig.update_yaxes(title_text="output throughput (tokens/s)", row=1, col=1)
    fig.update_yaxes(title_text=f"{metric.upper()} (ms)", row=1, col=2)
    return fig


class LoadExplorer(Explorer):
    """A slider over the swept rates: the load curves mark it, the CDF shows its tail."""

    def __init__(self, sweep: dict[str, list[RunStats]], metric: str = "ttft"):
        self.sweep, self.rates = sweep, [r.rate for r in next(iter(sweep.values()))]
        self.rate = W.SelectionSlider(options=[(f"{r:.3g} req/s", i)
                                               for i, r in enumerate(self.rates)],
                                      value=len(self.rates) // 2, description="rate",
                                      continuous_update=False)
        self.metric = W.ToggleButtons(options=["ttft", "e2e", "tpot"], value=metric)
        self.controls, self.readout = W.HBox([self.rate, self.metric]), W.HTML()
        self.figure, self.cdf = go.FigureWidget(), go.FigureWidget()
        self.wire(self.rate, self.metric)
        self.update()

    @property
    def widget(self) -> W.Widget:
        return W.VBox([self.controls, self.readout, self.figure, self.cdf])

    def update(self) -> None:
        i, m = self.rate.value, self.metric.value
        swap_figure(self.figure, load_figure(self.sweep, m, self.rates[i]))
        runs = {label: runs[i] for label, runs in self.sweep.items()}
        swap_figure(self.cdf, latency_cdf_figure({lb: getattr(r, m) for lb, r in runs.items()},
                                                 f"{m.upper()} of every request at "
                                                 f"{self.rates[i]:.3g} requests/s"))
        self.readout.value = "<br>".join(
            f"<b>{lb}</b>: {r.throughput:.0f} tokens/s, {m.upper()} p50 "
            f"{r.p(m, 50) * 1e3:.0f} ms, p99 {r.p(m, 99) * 1e3:.0f} ms"
            for lb, r in runs.items())
