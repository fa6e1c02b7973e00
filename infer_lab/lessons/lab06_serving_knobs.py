"""Lab 06's two knobs as sliders that re-run the short traces: the token budget, the block size.

* :class:`BudgetExplorer`: chunked prefill (Sarathi, Agrawal et al. 2024) under a token
  budget per step. A small budget cuts a long prompt into many chunks, so the requests
  decoding beside it never wait long for their next token (short *stalls*), but the
  prompt's own TTFT, and that of the requests queued behind it, grows; no chunking is the
  other end. Each budget is one point: longest stall against TTFT.
* :class:`BlockSizeExplorer`: PagedAttention's block size (Kwon et al. 2023). Small
  blocks waste few slots (at most ``block_size - 1`` per sequence, in its last block) but
  make long block tables (``ceil(n / block_size)`` entries to read per sequence per step)
  and share a prefix only in whole blocks; big blocks the reverse. Each size is one point:
  empty slots against table length.

A run is computed the first time its value is chosen and kept, so a slider only costs the
runs it visits (and the lab hands over the runs it already made).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as W
import plotly.graph_objects as go

from ..serving import Engine, EngineConfig
from .figures import COLORS, layout
from .lab06_serving_trace import Request, Trace, run_trace
from .widgets import Explorer, swap_figure

NO_CHUNKING = 0  # the budget slider's value for "no chunking"


# -- the token budget -------------------------------------------------------------------
@dataclass
class BudgetRun:
    """One run of the long-prompt mix (ms): what the neighbours and the prompt felt."""

    budget: int  # NO_CHUNKING: the whole prompt in one step
    steps: int
    stall_ms: float  # longest gap between two tokens of a request decoding beside it
    long_ttft_ms: float  # TTFT of the long prompt
    behind_ttft_ms: float  # median TTFT of the requests that arrived after it


def budget_run(trace: Trace, budget: int, early: int = 3, long_index: int = 3) -> BudgetRun:
    """Measure a trace of the mix: requests [0, early) decode when ``long_index`` arrives."""
    gaps = [b - a for s in trace.seqs[:early] for a, b in zip(s.token_times, s.token_times[1:])]
    behind = [s.ttft for s in trace.seqs[long_index + 1:]]
    return BudgetRun(budget, trace.num_ticks, max(gaps, default=0.0) * 1e3,
                     trace.seqs[long_index].ttft * 1e3,
                     statistics.median(behind) * 1e3 if behind else float("nan"))


class BudgetExplorer(Explorer):
    """A token-budget slider over the long-prompt mix; one point per budget visited."""

    def __init__(self, model, requests: list[Request], arrivals: list[int],
                 budgets: list[int], value: int, schedule_policy: Callable | None = None,
                 known: dict[int, Trace] | None = None, early: int = 3, long_index: int = 3):
        self.model, self.requests, self.arrivals = model, requests, arrivals
        self.policy, self.early, self.long_index = schedule_policy, early, long_index
        self.runs = {b: budget_run(t, b, early, long_index) for b, t in (known or {}).items()}
        opts = [("no chunking" if b == NO_CHUNKING else f"{b} tokens", b) for b in budgets]
        self.budget = W.SelectionSlider(options=opts, value=value, description="budget",
                                        continuous_update=False)
        self.controls, self.readout = self.budget, W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.budget)
        self.update()

    def engine(self, budget: int) -> Engine:
        """The engine of the lab's chunked-prefill section at this budget."""
        chunked = budget != NO_CHUNKING
        longest = max(len(r.prompt) for r in self.requests)
        config = EngineConfig(block_size=8, num_blocks=256, max_num_seqs=8,
                              max_num_batched_tokens=budget if chunked else longest + 16,
                              chunked_prefill=chunked)
        return Engine(self.model, config, schedule_policy=self.policy if chunked else None)

    def run(self, budget: int) -> BudgetRun:
        if budget not in self.runs:
            trace = run_trace(self.engine(budget), self.requests, self.arrivals)
            self.runs[budget] = budget_run(trace, budget, self.early, self.long_index)
        return self.runs[budget]

    def update(self) -> None:
        r = self.run(self.budget.value)
        swap_figure(self.figure, budget_figure(list(self.runs.values()), r.budget))
        name = "no chunking" if r.budget == NO_CHUNKING else f"budget {r.budget}"
        self.readout.value = (
            f"<b>{name}</b>: {r.steps} steps; longest stall of a decoding neighbour "
            f"{r.stall_ms:.1f} ms; TTFT of the long prompt {r.long_ttft_ms:.0f} ms, of the "
            f"requests behind it {r.behind_ttft_ms:.0f} ms (median)")


def budget_figure(runs: list[BudgetRun], current: int | None = None) -> go.Figure:
    """Longest stall (ms) against TTFT (ms), one point per budget; the current one ringed."""
    runs = sorted(runs, key=lambda r: (r.budget == NO_CHUNKING, r.budget))
    label = ["no chunking" if r.budget == NO_CHUNKING else str(r.budget) for r in runs]
    fig = go.Figure()
    for k, (name, ttft) in enumerate((("long prompt", "long_ttft_ms"),
                                      ("requests behind it", "behind_ttft_ms"))):
        fig.add_trace(go.Scatter(
            x=[getattr(r, ttft) for r in runs], y=[r.stall_ms for r in runs], text=label,
            mode="markers+text", textposition="top center", name=f"TTFT of the {name}",
            marker={"size": [16 if r.budget == current else 9 for r in runs],
                    "color": COLORS[k], "line": {"color": "black", "width": [
                        2 if r.budget == current else 0 for r in runs]}},
            hovertemplate="budget %{text}: TTFT %{x:.0f} ms, stall %{y:.1f} ms<extra></extra>"))
    return layout(fig, "Chunked prefill: stalls of the decoding requests against TTFT",
                  "TTFT (ms)", "longest gap between two tokens of a neighbour (ms)")


# -- the block size ---------------------------------------------------------------------
@dataclass
class BlockSizeRun:
    """Averages over the steps of one trace, per running sequence."""

    block_size: int
    table_entries: float  # block-table length (blocks a step reads per sequence)
    empty_slots: float  # slots of its blocks that hold no token (the last block's rest)
    hit_rate: float  # prompt tokens the prefix cache served


def block_size_run(trace: Trace, block_size: int, hit_rate: float) -> BlockSizeRun:
    """Mean table length and mean empty slots per running sequence over ``trace``."""
    tables = empty = n = 0
    for snap in trace.snapshots:
        for sid, table in snap.tables.items():
            tables += len(table)
            empty += len(table) * snap.block_size - snap.tokens[sid]
            n += 1
    return BlockSizeRun(block_size, tables / max(n, 1), empty / max(n, 1), hit_rate)


class BlockSizeExplorer(Explorer):
    """A block-size slider over the shared-prefix trace, the pool's bytes held fixed."""

    def __init__(self, model, requests: list[Request], arrivals: list[int],
                 sizes: list[int], value: int, pool_tokens: int,
                 known: dict[int, tuple[Trace, float]] | None = None, max_num_seqs: int = 4,
                 prefix_lookup: Callable | None = None):
        self.model, self.requests, self.arrivals = model, requests, arrivals
        self.pool_tokens, self.max_num_seqs, self.lookup = pool_tokens, max_num_seqs, prefix_lookup
        self.runs = {b: block_size_run(t, b, h) for b, (t, h) in (known or {}).items()}
        self.size = W.SelectionSlider(options=[(str(b), b) for b in sizes], value=value,
                                      description="block size", continuous_update=False)
        self.controls, self.readout = self.size, W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.size)
        self.update()

    def run(self, b: int) -> BlockSizeRun:
        if b not in self.runs:
            engine = Engine(self.model, EngineConfig(
                block_size=b, num_blocks=max(self.pool_tokens // b, 1),
                max_num_seqs=self.max_num_seqs), prefix_lookup=self.lookup)
            trace = run_trace(engine, self.requests, self.arrivals)
            self.runs[b] = block_size_run(trace, b, engine.block_manager.prefix_hit_rate)
        return self.runs[b]

    def update(self) -> None:
        r = self.run(self.size.value)
        swap_figure(self.figure, block_size_figure(list(self.runs.values()), r.block_size))
        self.readout.value = (
            f"<b>block size {r.block_size}</b>: a running sequence's table has "
            f"{r.table_entries:.1f} entries and {r.empty_slots:.1f} empty slots on average; "
            f"prefix-cache hit rate {r.hit_rate:.0%}")


def block_size_figure(runs: list[BlockSizeRun], current: int | None = None) -> go.Figure:
    """Empty slots against table entries per sequence, one point per block size."""
    runs = sorted(runs, key=lambda r: r.block_size)
    fig = go.Figure(go.Scatter(
        x=[r.table_entries for r in runs], y=[r.empty_slots for r in runs],
        text=[f"{r.block_size}" for r in runs], customdata=[r.hit_rate for r in runs],
        mode="lines+markers+text", textposition="top center", name="block size",
        marker={"size": [16 if r.block_size == current else 9 for r in runs],
                "color": COLORS[0]},
        hovertemplate="block size %{text}: %{x:.1f} entries, %{y:.1f} empty slots, "
                      "hit rate %{customdata:.0%}<extra></extra>"))
    fig.update_xaxes(type="log")
    return layout(fig, "Block size: wasted slots against block-table length",
                  "block-table entries per sequence (blocks, log scale)",
                  "empty slots per sequence (tokens)")
