"""Lab 07's tiles, drawn: the matmul's K loop, FlashAttention's online softmax, paged reads.

* :class:`MatmulTilesExplorer`: program (i, j) of a tiled matmul owns a (BLOCK_M, BLOCK_N)
  tile of C and walks K in steps of BLOCK_K; the sliders pick the program and the step, the
  figure shows the tiles of A and B it loads (the Triton matmul tutorial's picture) and
  :func:`matmul_traffic` what tiling saves: each element of A is loaded cdiv(N, BLOCK_N)
  times, not N times.
* :class:`OnlineSoftmaxExplorer`: one query row of attention, K/V arriving a tile at a
  time through :func:`infer_lab.kernels.flash_attention.online_softmax_step`: the running
  max m and sum l after each tile, and the output after the last tile equal to
  softmax(q K^T / sqrt(d)) V (FlashAttention, Dao et al. 2022).
* :func:`paged_figure`, :func:`paged_check`: decode attention read through block tables
  (PagedAttention, Kwon et al. 2023), drawn with lab 06's block-table picture, and the
  paged kernel's answer against the gathering reference and contiguous attention.
"""

from __future__ import annotations

import math

import ipywidgets as W
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..kernels.flash_attention import online_softmax_step
from ..kv_cache import sdpa
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure

TILE_STATES = {"not read": "#f4f4f4", "read at an earlier K step": "#9ecae1",
               "read at this K step": "#e6550d", "masked (loads 0)": "#bbbbbb"}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# -- the tiled matmul ---------------------------------------------------------------------
def tile_reads(M: int, K: int, N: int, bm: int, bn: int, bk: int, pid_m: int, pid_n: int,
               k: int) -> dict[str, tuple[int, int]]:
    """Half-open index ranges program (pid_m, pid_n) loads at K step k, before masking:
    rows of A and C, columns of B and C, and the K slice of both."""
    return {"rows": (pid_m * bm, (pid_m + 1) * bm), "cols": (pid_n * bn, (pid_n + 1) * bn),
            "k": (k * bk, (k + 1) * bk)}


def matmul_traffic(M: int, K: int, N: int, bm: int, bn: int, elem: int = 4) -> dict[str, int]:
    """Bytes loaded from memory: every output reading its row of A and column of B (no
    reuse: 2 M N K loads), against the tiled kernel (A re-read by each of the cdiv(N, bn)
    column programs, B by each of the cdiv(M, bm) row programs); C written once in both."""
    return {"untiled": (2 * M * N * K + M * N) * elem,
            "tiled": (M * K * _cdiv(N, bn) + K * N * _cdiv(M, bm) + M * N) * elem}


def _grid(n_rows: int, n_cols: int, rows: tuple[int, int], cols: tuple[int, int],
          real: tuple[int, int], earlier: tuple[int, int] | None = None,
          along: str = "cols") -> list[list[int | None]]:
    """Cell states of one matrix (padded to whole tiles) for the highlighted tile."""
    z = [[0 if (i < real[0] and j < real[1]) else None for j in range(n_cols)]
         for i in range(n_rows)]
    for i in range(*rows):
        for j in range(*cols):
            z[i][j] = 2 if (i < real[0] and j < real[1]) else 3
    if earlier is not None:  # the same rows (or columns) at the K steps already taken
        for i in range(*(rows if along == "cols" else earlier)):
            for j in range(*(earlier if along == "cols" else cols)):
                if i < real[0] and j < real[1]:
                    z[i][j] = 1
    return z


def matmul_tiles_figure(M: int, K: int, N: int, bm: int, bn: int, bk: int, pid_m: int,
                        pid_n: int, k: int) -> go.Figure:
    """A, B and C side by side, padded to whole tiles: what program (pid_m, pid_n) loads."""
    r = tile_reads(M, K, N, bm, bn, bk, pid_m, pid_n, k)
    Mp, Kp, Np = _cdiv(M, bm) * bm, _cdiv(K, bk) * bk, _cdiv(N, bn) * bn
    mats = {f"A ({M} x {K})": _grid(Mp, Kp, r["rows"], r["k"], (M, K), (0, r["k"][0])),
            f"B ({K} x {N})": _grid(Kp, Np, r["k"], r["cols"], (K, N), (0, r["k"][0]), "rows"),
            f"C ({M} x {N}): the accumulator tile": _grid(Mp, Np, r["rows"], r["cols"], (M, N))}
    names, n = list(TILE_STATES), len(TILE_STATES)
    scale = [pair for s, c in enumerate(TILE_STATES.values())
             for pair in ([s / n, c], [(s + 1) / n, c])]
    fig = make_subplots(rows=1, cols=3, subplot_titles=list(mats), horizontal_spacing=0.06)
    for col, z in enumerate(mats.values(), start=1):
        text = [[names[v] if v is not None else "" for v in row] for row in z]
        fig.add_trace(go.Heatmap(z=z, text=text, zmin=-0.5, zmax=n - 0.5, colorscale=scale,
                                 showscale=False, xgap=1, ygap=1,
                                 hovertemplate="row %{y}, column %{x}: %{text}<extra></extra>"),
                      row=1, col=col)
    for name, c in TILE_STATES.items():  # a legend for the heatmaps' categories
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker={"size": 12, "color": c, "symbol": "square"}))
    layout(fig, f"Program ({pid_m}, {pid_n}) at K step {k}: tiles {bm}x{bk} of A, {bk}x{bn} "
                "of B", "", "", height=420)
    fig.update_yaxes(autorange="reversed", title_text="row (index)")
    fig.update_xaxes(title_text="column (index)")
    fig.update_layout(legend={"orientation": "h", "y": -0.15})
    return fig


class MatmulTilesExplorer(Explorer):
    """Sliders over the program (row and column of C's tiles) and its K step."""

    def __init__(self, M: int, K: int, N: int, bm: int = 16, bn: int = 16, bk: int = 16):
        self.shape, self.blocks = (M, K, N), (bm, bn, bk)
        slider = lambda name, n: W.IntSlider(value=0, min=0, max=n - 1, description=name,
                                             continuous_update=False)
        self.pid_m, self.pid_n = slider("pid_m", _cdiv(M, bm)), slider("pid_n", _cdiv(N, bn))
        self.k = slider("K step", _cdiv(K, bk))
        self.controls, self.readout = W.HBox([self.pid_m, self.pid_n, self.k]), W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.pid_m, self.pid_n, self.k)
        self.update()

    def update(self) -> None:
        (M, K, N), (bm, bn, bk) = self.shape, self.blocks
        i, j, k = self.pid_m.value, self.pid_n.value, self.k.value
        swap_figure(self.figure, matmul_tiles_figure(M, K, N, bm, bn, bk, i, j, k))
        t = matmul_traffic(M, K, N, bm, bn)
        self.readout.value = (
            f"{_cdiv(M, bm)} x {_cdiv(N, bn)} programs, {_cdiv(K, bk)} K steps each; "
            f"each element of A is loaded by {_cdiv(N, bn)} programs, each of B by "
            f"{_cdiv(M, bm)}. Loads in fp32: {t['tiled'] / 1e3:,.0f} KB tiled against "
            f"{t['untiled'] / 1e3:,.0f} KB with no reuse ({t['untiled'] / t['tiled']:.1f}x).")


# -- FlashAttention's online softmax, one query row -----------------------------------------
def online_softmax_history(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int
                           ) -> list[dict]:
    """q (D,), k, v (S, D): (m, l, output so far) after each tile of ``block`` keys."""
    D = q.shape[-1]
    m = torch.full((1,), float("-inf"))
    l, acc = torch.zeros(1), torch.zeros(1, D)
    out = []
    for start in range(0, k.shape[0], block):
        s = (q.float() @ k[start:start + block].float().T / math.sqrt(D))[None]  # (1, n)
        m, l, acc = online_softmax_step(m, l, acc, s, v[start:start + block].float())
        out.append({"start": start, "stop": start + s.shape[-1], "m": float(m),
                    "l": float(l), "o": (acc / l[:, None])[0]})
    return out


def attention_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for one query (D,) over all S keys: the reference."""
    return sdpa(q.float()[None, None, None], k.float()[None, None], v.float()[None, None],
                None)[0, 0, 0]  # (D,)


class OnlineSoftmaxExplorer(Explorer):
    """A slider over the K/V tiles that have arrived: scores, running max m and sum l."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = 16):
        self.scores = (q.float() @ k.float().T / math.sqrt(q.shape[-1])).tolist()  # (S,)
        self.history = online_softmax_history(q, k, v, block)
        self.target = attention_row(q, k, v)
        self.tile = W.IntSlider(value=1, min=1, max=len(self.history), description="tiles seen",
                                continuous_update=False)
        self.controls, self.readout = self.tile, W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.tile)
        self.update()

    def state(self, tiles: int) -> dict:
        """m, l and the output after ``tiles`` tiles, and its distance to the final answer."""
        h = self.history[tiles - 1]
        return {**h, "error": float((h["o"] - self.target).abs().max())}

    def update(self) -> None:
        t = self.tile.value
        st = self.state(t)
        S, cur = len(self.scores), self.history[t - 1]
        colors = [COLORS[0] if j < cur["start"] else COLORS[1] if j < cur["stop"] else "#cccccc"
                  for j in range(S)]
        weights = [math.exp(s - st["m"]) / st["l"] if j < cur["stop"] else None
                   for j, s in enumerate(self.scores)]
        final_m = self.history[-1]["m"]
        final = [math.exp(s - final_m) / self.history[-1]["l"] for s in self.scores]
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                            subplot_titles=["scores q·k / sqrt(d); dashed: running max m",
                                            "weights exp(s - m) / l so far; dotted: final"])
        fig.add_trace(go.Bar(y=self.scores, marker_color=colors, name="score"), 1, 1)
        fig.add_hline(y=st["m"], line={"dash": "dash", "color": "black"}, row=1, col=1)
        fig.add_trace(go.Scatter(y=weights, mode="markers", name="so far",
                                 marker={"color": COLORS[1], "size": 5}), 1, 2)
        fig.add_trace(go.Scatter(y=final, mode="lines", name="final softmax",
                                 line={"dash": "dot", "color": "black"}), 1, 2)
        layout(fig, f"After {t} of {len(self.history)} tiles (keys {cur['start']} to "
                    f"{cur['stop'] - 1} just arrived)", "", "", showlegend=False)
        fig.update_xaxes(title_text="key position (token)")
        fig.update_yaxes(title_text="score (logit)", row=1, col=1)
        fig.update_yaxes(title_text="attention weight (probability)", row=1, col=2)
        swap_figure(self.figure, fig)
        self.readout.value = (
            f"m = {st['m']:.4f}, l = {st['l']:.4f} after keys 0..{cur['stop'] - 1}; the "
            f"output so far is {st['error']:.2e} (max abs) from softmax(q K^T / sqrt(d)) V"
            + (" : the last tile, so the same answer" if t == len(self.history) else ""))


# -- paged attention --------------------------------------------------------------------------
def paged_inputs(lens: tuple[int, ...], block_size: int, n_head: int = 4, n_kv_head: int = 2,
                 head_dim: int = 32, seed: int = 0, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, ...]:
    """q (B, H, D), K/V pools (num_blocks, H_kv, bs, D), block tables (B, width) int32 with
    each sequence's blocks scattered over the pool, context lengths (B,)."""
    g = torch.Generator().manual_seed(seed)
    need = [_cdiv(n, block_size) for n in lens]
    num_blocks = sum(need) + 4  # a few free blocks
    order = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.zeros(len(lens), max(need), dtype=torch.int32)
    for b, n in enumerate(need):
        tables[b, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    q = torch.randn(len(lens), n_head, head_dim, generator=g)
    pools = [torch.randn(num_blocks, n_kv_head, block_size, head_dim, generator=g)
             for _ in range(2)]
    return tuple(t.to(device) for t in (q, *pools, tables, torch.tensor(lens)))


def paged_snapshot(tables: torch.Tensor, lens: torch.Tensor, num_blocks: int, block_size: int):
    """The inputs as lab 06's BlockSnapshot, for its block-table picture."""
    from .lab06_serving_trace import BlockSnapshot

    held = {b: tables[b, :_cdiv(int(n), block_size)].tolist() for b, n in enumerate(lens)}
    refs = [0] * num_blocks
    for blocks in held.values():
        for blk in blocks:
            refs[blk] += 1
    return BlockSnapshot(num_blocks, block_size, held,
                         {b: int(n) for b, n in enumerate(lens)}, refs, set())


def paged_figure(tables: torch.Tensor, lens: torch.Tensor, num_blocks: int,
                 block_size: int) -> go.Figure:
    from .lab06_serving import block_table_figure

    return block_table_figure(paged_snapshot(tables.cpu(), lens.cpu(), num_blocks, block_size),
                              "Each sequence's block table points into one shared pool",
                              pool_cols=8)


def contiguous_attention(q, k_pool, v_pool, tables, lens) -> torch.Tensor:
    """Decode attention with each sequence's K/V first copied into one contiguous run:
    what paged attention must equal, without the copy. Returns (B, H, D)."""
    out = []
    for b, n in enumerate(lens.tolist()):
        blocks = tables[b, :_cdiv(n, k_pool.shape[2])].long()
        k, v = (p[blocks].transpose(0, 1).flatten(1, 2)[:, :n] for p in (k_pool, v_pool))
        out.append(sdpa(q[b][None, :, None], k[None], v[None], None)[0, :, 0])  # (H, D)
    return torch.stack(out)


def paged_check(q, k_pool, v_pool, tables, lens) -> dict[str, float]:
    """Max abs differences: the paged kernel (or, without kernels, the reference) against
    the gathering reference and against contiguous attention."""
    from ..kernels import paged_attention as pa

    got = pa.paged_attention(q, k_pool, v_pool, tables, lens)
    ref = pa.paged_attention_reference(q, k_pool, v_pool, tables, lens)
    flat = contiguous_attention(q, k_pool, v_pool, tables, lens)
    return {"kernel vs gather reference": float((got - ref).abs().max()),
            "kernel vs contiguous attention": float((got - flat).abs().max())}
