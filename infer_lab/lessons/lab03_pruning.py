"""Lab 03's figures, widgets and demo drivers: what pruning costs and what it buys.

* Magnitude pruning (Han et al. 2015) zeroes the weights of smallest ``|w|``. Quality
  holds up to a point, then collapses: :class:`SparsityExplorer` redraws held-out
  perplexity as a slider moves the sparsity.
* A zero in a dense matrix costs the same multiply-add as any other number, so
  unstructured sparsity alone saves no time. :func:`time_sparse_matmul` times one linear
  layer dense, dense-with-zeros and as a CSR sparse matrix: a sparse kernel skips the
  zeros but pays for indices and irregular memory access, and only wins at very high
  sparsity.
* 2:4 semi-structured sparsity (Mishra et al. 2021) keeps 2 of every 4 weights, a
  pattern sparse tensor cores (NVIDIA Ampere and later) skip in hardware:
  :func:`pattern_2_4_figure` draws it.
* Structured pruning removes whole MLP neurons: the matrices shrink and the matmuls
  with them, on any hardware. :func:`infer_lab.timing.decode_tokens_per_s` measures it.

The lab's sizes are ``scale.pruning`` (:mod:`infer_lab.scale`); its held-out ids come
from :func:`infer_lab.quality.heldout_ids`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch import nn

from ..bench import interleaved_times
from ..quality import perplexity
from ..scale import SCALES, PruningSizes, current_scale
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


SIZES = {name: sc.pruning for name, sc in SCALES.items()}  # written in scale.py


def lab_sizes(scale_name: str | None = None) -> PruningSizes:
    """The sizes for ``scale_name`` (default: the current INFER_LAB_SCALE)."""
    return current_scale(scale_name).pruning


def ppl(model: nn.Module, ids: Sequence[int], seq_len: int) -> float:
    """Held-out perplexity of ``model`` on token ids (no progress bar: it is quick)."""
    return perplexity(model, list(ids), seq_len=seq_len, progress=False).ppl


# -- magnitude ------------------------------------------------------------------------------
def magnitude_histogram_figure(weight: torch.Tensor, sparsity: float,
                               name: str = "weight", bins: int = 80) -> go.Figure:
    """Histogram of |w| of one matrix with the magnitude-pruning threshold at ``sparsity``."""
    a = weight.detach().abs().flatten().float()
    k = round(sparsity * a.numel())
    thresh = float(a.kthvalue(k).values) if k > 0 else 0.0
    hi = float(a.max())
    counts = torch.histc(a, bins=bins, min=0.0, max=hi)  # binned here: 10^5 points are slow
    width = hi / bins
    fig = go.Figure(go.Bar(x=[(i + 0.5) * width for i in range(bins)], y=counts.tolist(),
                           width=width, marker_color=COLORS[0], name="|w|"))
    fig.add_vline(x=thresh, line={"color": COLORS[3], "dash": "dash"},
                  annotation_text=f"{sparsity:.0%} pruned below {thresh:.3g}")
    return layout(fig, f"|w| of {name} {tuple(weight.shape)}", "|w| (unitless)",
                  "weights (count)", showlegend=False, bargap=0)


class SparsityExplorer(Explorer):
    """Move the sparsity slider: the model is magnitude-pruned at that sparsity and its
    held-out perplexity joins the curve (each point is measured once, then cached).

    ``prune(model, sparsity)`` prunes a fresh copy of the dense model in place.
    """

    def __init__(self, model: nn.Module, ids: Sequence[int], seq_len: int,
                 prune: Callable[[nn.Module, float], object],
                 sparsities: Sequence[float] = (0.0, 0.5, 0.9), label: str = "magnitude"):
        from tqdm.auto import tqdm

        self.model, self.ids, self.seq_len, self.prune, self.label = (
            model, list(ids), seq_len, prune, label)
        self.points: dict[float, float] = {}  # sparsity -> perplexity
        for s in tqdm(sparsities, desc="sparsity sweep", leave=False):
            self.measure(s)
        grid = sorted({round(x * 0.05, 2) for x in range(20)} | {round(s, 2) for s in sparsities})
        self.sparsity = W.SelectionSlider(options=grid, value=0.5 if 0.5 in grid else grid[0],
                                          description="sparsity", continuous_update=False)
        self.controls = W.HBox([self.sparsity])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.sparsity)
        self.update()

    def measure(self, sparsity: float) -> float:
        s = round(float(sparsity), 4)
        if s not in self.points:
            m = self.model
            if s > 0:  # prune a copy: the dense model stays as it is
                m = copy.deepcopy(self.model)
                self.prune(m, s)
            self.points[s] = ppl(m, self.ids, self.seq_len)
        return self.points[s]

    def update(self) -> None:
        s = self.sparsity.value
        p = self.measure(s)
        swap_figure(self.figure, sparsity_curve_figure({self.label: self.points}, marker=(s, p)))
        dense = self.points.get(0.0)
        rel = f" ({p / dense:.2f}x the dense model's {dense:.3g})" if dense else ""
        self.readout.value = (f"sparsity <b>{s:.0%}</b>: held-out perplexity "
                              f"<b>{p:.3g}</b>{rel}")


def sparsity_curve_figure(curves: dict[str, dict[float, float]],
                          marker: tuple[float, float] | None = None,
                          title: str = "Held-out perplexity against sparsity") -> go.Figure:
    """Perplexity (log axis) against the fraction of weights pruned, one line per method."""
    fig = go.Figure()
    for k, (label, pts) in enumerate(curves.items()):
        xs = sorted(pts)
        fig.add_trace(go.Scatter(x=[100 * x for x in xs], y=[pts[x] for x in xs],
                                 mode="lines+markers", name=label,
                                 line={"color": COLORS[k % len(COLORS)]}))
    if marker is not None:
        fig.add_trace(go.Scatter(x=[100 * marker[0]], y=[marker[1]], mode="markers",
                                 name="slider", marker={"size": 16, "symbol": "diamond",
                                                        "color": "black"}))
    layout(fig, title, "weights pruned (%)", "held-out perplexity (log)")
    fig.update_yaxes(type="log")
    return fig


# -- 2:4 ------------------------------------------------------------------------------------
def pattern_2_4_figure(weight: torch.Tensor, mask: torch.Tensor,
                       title: str = "2:4 sparsity: 2 of every 4 weights along a row") -> go.Figure:
    """Heatmap of |w| of a small block, pruned cells blank, a line between groups of 4."""
    w = weight.detach().float().abs()
    z = torch.where(mask, w, torch.full_like(w, float("nan")))  # NaN: drawn blank
    rows, cols = w.shape
    fig = go.Figure(go.Heatmap(z=z.tolist(), colorscale="Viridis", xgap=1, ygap=1,
                               colorbar={"title": "|w|"}, hoverongaps=False))
    for c in range(4, cols, 4):
        fig.add_vline(x=c - 0.5, line={"color": "black", "width": 2})
    layout(fig, title, "input dimension (column of W)", "output dimension (row of W)",
           height=max(260, 28 * rows + 120))
    fig.update_yaxes(autorange="reversed")
    return fig


# -- speed ----------------------------------------------------------------------------------
def time_sparse_matmul(n_out: int = 3072, n_in: int = 768,
                       sparsities: Sequence[float] = (0.5, 0.7, 0.9, 0.95, 0.99),
                       batch: int = 1, repeats: int = 20, seed: int = 0) -> dict[str, list[float]]:
    """Best-of-``repeats`` ms of ``W @ x`` for W (n_out, n_in), x (n_in, batch), at each sparsity.

    "dense" multiplies the unpruned W; "dense, zeros kept" the pruned W stored dense (the
    zeros are multiplied like any number); "CSR sparse" stores only the non-zeros with their
    column indices and row offsets and skips the rest.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g)
    x = torch.randn(n_in, batch, generator=g)
    out: dict[str, list[float]] = {"dense": [], "dense, zeros kept": [], "CSR sparse": []}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        for s in tqdm(sparsities, desc="sparse matmul", leave=False):
            wz = w * (torch.rand(w.shape, generator=g) >= s)
            csr = wz.to_sparse_csr()
            fns = {"dense": lambda: w @ x, "dense, zeros kept": lambda wz=wz: wz @ x,
                   "CSR sparse": lambda csr=csr: csr @ x}
            times = interleaved_times(fns, repeats, warmup=2, device="cpu")
            for k, t in times.items():
                out[k].append(min(t) * 1e3)  # best of: other processes only ever add time
    return out


def sparse_matmul_figure(sparsities: Sequence[float], times: dict[str, list[float]],
                         shape: tuple[int, int]) -> go.Figure:
    """Time of one matmul against sparsity: dense, dense with zeros, CSR."""
    fig = go.Figure()
    for k, (label, ms) in enumerate(times.items()):
        fig.add_trace(go.Scatter(x=[100 * s for s in sparsities], y=ms, name=label,
                                 mode="lines+markers", line={"color": COLORS[k]}))
    layout(fig, f"One {shape[0]}x{shape[1]} matmul, batch 1, this CPU",
           "weights pruned (%)", "time per call (ms, log)")
    fig.update_yaxes(type="log")
    return fig


def n_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameters of the model (tied embeddings once); with ``nonzero``, only those != 0."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int((p != 0).sum()) if nonzero else p.numel()
    return total
