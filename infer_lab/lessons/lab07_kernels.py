"""Lab 07's figures: programs and masks, what fusion saves, the bytes of an int4 GEMV.

* :func:`program_grid_figure`: Triton's programming model (the tutorial's vector add): a
  grid of ``cdiv(n, BLOCK)`` programs, program ``pid`` owning ``pid * BLOCK + arange(BLOCK)``,
  the last block's lanes past ``n`` masked off.
* :func:`fusion_figure`, :func:`fusion_times`: what the eager PyTorch chain of an RMSNorm or
  a SwiGLU moves, op by op, against one fused kernel (one read, one write), and their times.
* :func:`traffic_ratio`, :func:`gemv_speedup_bound`: the two numbers the lab's predictions
  are graded against (eager bytes over fused bytes; fp32 bytes over int4 bytes).
* :func:`gemv_bytes_figure`: bytes of weights one decode-step GEMV reads at fp32, fp16,
  int8 and int4 (gpt-fast, Marlin: dequantize in registers so that only codes cross memory).

Honest labelling throughout: under Triton's interpreter (a CPU) a kernel's time says nothing
(each program runs in numpy), so only the PyTorch references are timed there and every
Triton entry says "unmeasured". The widgets that step through tiles live in
:mod:`.lab07_kernels_tiles`; the runs on code-m, the timings and the roofline in
:mod:`.lab07_kernels_runs`. Sizes: ``scale.kernels`` (:mod:`infer_lab.scale`).
"""

from __future__ import annotations

import inspect
import textwrap
import warnings
from typing import Any

import plotly.graph_objects as go
import torch

from ..hardware import device_name
from ..kernels import runtime
from ..kernels.check import device_or_default
from ..scale import KernelsSizes
from .figures import COLORS, bytes_unit, layout

UNMEASURED = "unmeasured: the interpreter is a correctness tool"


def unmeasured(device: torch.device | str | None = None) -> str:
    """Why a Triton kernel has no time on ``device``."""
    where = runtime.backend(torch.empty(0, device=device_or_default(device)))
    return UNMEASURED if where == "interpreter" else "unmeasured: no Triton kernel runs here"


def backend_line(device: torch.device | str | None = None) -> str:
    """One line: where this lab's kernels run (compiled, interpreted, or not at all)."""
    device = device_or_default(device)
    where = runtime.backend(torch.empty(0, device=device))
    if where == "triton":
        return (f"kernels: compiled Triton {_version()} on {device_name(device)}: every "
                "kernel runs and is timed")
    if where == "interpreter":
        return (f"kernels: Triton {_version()}'s interpreter on the CPU (TRITON_INTERPRET=1): "
                "every kernel runs, one program at a time in numpy; correct, not fast, so "
                "no kernel is timed here")
    if not runtime.HAS_TRITON:
        return f"kernels: Triton is not installed ({runtime.INSTALL}); PyTorch references only"
    return ("kernels: PyTorch references only (no CUDA GPU, and Triton's interpreter is off: "
            "TRITON_INTERPRET=1 was not set when Triton was imported; restart the kernel and "
            "run the first cell first)")


def _version() -> str:
    import triton

    return triton.__version__


def can_launch(device: torch.device | str | None = None) -> bool:
    """True when Triton kernels run here (compiled on CUDA, or interpreted on a CPU)."""
    return runtime.backend(torch.empty(0, device=device_or_default(device))) != "reference"


def source(kernel: Any) -> str:
    """The Python source of a ``@jit`` kernel (Triton's, or the stand-in without Triton)."""
    return textwrap.dedent(inspect.getsource(getattr(kernel, "fn", kernel)))


def lines(result: dict) -> str:
    """A result as 'name: value' lines, numbers to 3 significant figures."""
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) \
        else str(v)
    return "\n".join(f"  {k}: {fmt(v)}" for k, v in result.items())


def validate_kernels(*modules, device: torch.device | str | None = None) -> str:
    """Each kernel file's ``validate()`` report (its edge cases against its reference). The
    interpreter's numpy warns where a case overflows on purpose (huge gates, logits near 100):
    the reports say what matters, so the warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return "\n".join(str(m.validate(device=device)) for m in modules)


# -- (a) programs, blocks, masks ----------------------------------------------------------
def program_grid(n: int, block: int) -> list[list[int | None]]:
    """Element index each lane of each program handles, None where the mask is off."""
    programs = -(-n // block)
    return [[i if (i := pid * block + lane) < n else None for lane in range(block)]
            for pid in range(programs)]


def program_grid_figure(n: int = 10, block: int = 4) -> go.Figure:
    """One row per program, one column per lane of its block; lanes past n are masked."""
    grid = program_grid(n, block)
    P = len(grid)
    z = [[pid if i is not None else None for i in row] for pid, row in enumerate(grid)]
    text = [[f"x[{i}]" if i is not None else "masked" for i in row] for row in grid]
    scale = [pair for k in range(P) for pair in ([k / P, COLORS[k % len(COLORS)]],
                                                 [(k + 1) / P, COLORS[k % len(COLORS)]])]
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", showscale=False, xgap=3, ygap=3,
        colorscale=scale, zmin=-0.5, zmax=P - 0.5, y=[f"pid {p}" for p in range(P)],
        hovertemplate="%{y}, lane %{x}: %{text}<extra></extra>"))
    masked = sum(i is None for row in grid for i in row)
    layout(fig, f"vector add of n = {n} in blocks of {block}: {len(grid)} programs, "
                f"{masked} lanes masked", "lane (offset in the block, tl.arange(0, BLOCK))",
           "program (tl.program_id(0))", height=120 + 60 * len(grid))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(plot_bgcolor="#eeeeee")  # masked lanes show as the grey background
    return fig


# -- (b) fusion -----------------------------------------------------------------------------
def fusion_traffic(rows: int, cols: int, dtype: torch.dtype = torch.float32
                   ) -> dict[str, dict[str, int]]:
    """{kernel: {op: bytes}} of each eager op, and the fused kernel's bytes, from the kernel
    files' own counts (:func:`~infer_lab.kernels.rmsnorm.unfused_traffic`, ...)."""
    from ..kernels import rmsnorm, swiglu

    n = rows * cols
    return {"RMSNorm": {**dict(rmsnorm.unfused_traffic(rows, cols, dtype)),
                        "fused": rmsnorm.fused_traffic(rows, cols, dtype)},
            "SwiGLU": {**dict(swiglu.unfused_traffic(n, dtype)),
                       "fused": swiglu.fused_traffic(n, dtype)}}


def traffic_ratio(rows: int, cols: int, kernel: str = "RMSNorm",
                  dtype: torch.dtype = torch.float32) -> float:
    """Bytes the eager chain of ``kernel`` moves over the fused kernel's (the prediction
    ``kernels_rmsnorm_traffic_ratio`` is graded against it)."""
    ops = fusion_traffic(rows, cols, dtype)[kernel]
    return sum(v for op, v in ops.items() if op != "fused") / ops["fused"]


def fusion_figure(rows: int, cols: int, dtype: torch.dtype = torch.float32) -> go.Figure:
    """Stacked bars: the bytes each eager op moves, against the one fused kernel's."""
    traffic = fusion_traffic(rows, cols, dtype)
    top = max(sum(v for k, v in ops.items() if k != "fused") for ops in traffic.values())
    div, unit = bytes_unit(top)
    fig = go.Figure()
    ops = list(dict.fromkeys(k for t in traffic.values() for k in t if k != "fused"))
    for i, op in enumerate(ops):
        xs = [name for name, t in traffic.items() if op in t]
        fig.add_trace(go.Bar(x=[f"{x} eager" for x in xs], y=[traffic[x][op] / div for x in xs],
                             name=op, marker_color=COLORS[i % len(COLORS)]))
    fig.add_trace(go.Bar(x=[f"{x} fused" for x in traffic],
                         y=[t["fused"] / div for t in traffic.values()], name="one fused kernel",
                         marker_color="#333333"))
    layout(fig, f"Bytes moved on a ({rows}, {cols}) {str(dtype)[6:]} input: eager ops vs one "
                "kernel", "", f"memory traffic ({unit})", barmode="stack")
    return fig


def fusion_times(sizes: KernelsSizes, device: torch.device | str | None = None) -> list[dict]:
    """Each kernel file's benchmark rows at ``sizes.bench_rows``: the eager PyTorch chain
    timed, the fused kernel timed on a GPU and "unmeasured" under the interpreter."""
    from ..kernels import rmsnorm, swiglu

    device = device_or_default(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    kw = {"sizes": (sizes.bench_rows,), "repeats": sizes.repeats, "dtype": dtype,
          "device": device}
    return rmsnorm.benchmark(**kw) + swiglu.benchmark(**kw)


def format_rows(rows: list[dict], device: torch.device | str | None = None) -> str:
    """Benchmark rows as lines: kernel, implementation, bytes moved, then the median time
    with GB/s (and GFLOP/s where the row counts FLOPs), or why there is no time."""
    out = []
    for r in rows:
        div, unit = bytes_unit(r.get("bytes") or 1)
        moved = f"{r['bytes'] / div:7.2f} {unit}" if r.get("bytes") else ""
        if r.get("ms"):
            timing = f"{r['ms']:9.3f} ms"
            if r.get("bytes"):
                timing += f"  {r['bytes'] / r['ms'] / 1e6:8.2f} GB/s"
            if r.get("FLOP/s"):
                timing += f"  {r['FLOP/s'] / 1e9:8.2f} GFLOP/s"
        else:
            timing = unmeasured(device) if "unmeasured" in (r.get("note") or "") else "-"
        note = f"  ({r['note']})" if r.get("note") and r.get("ms") else ""
        out.append(f"{r['kernel']:>16} {r['impl']:>9}: {moved:>11}  {timing}{note}")
    return "\n".join(out)


# -- (e) bytes of a decode GEMV -----------------------------------------------------------------
GEMV_SHAPES = {"code-m MLP up (256 x 704)": (256, 704),
               "SmolLM2-135M MLP up (576 x 1536)": (576, 1536),
               "Llama-3-8B MLP up (4096 x 14336)": (4096, 14336)}


def gemv_bytes(K: int, N: int, group: int = 64) -> dict[str, int]:
    """Bytes a batch-1 decode step reads for one (K -> N) layer's weights in each format:
    the layers' own buffers, built on the meta device (nothing is allocated)."""
    from ..quant.int4 import Int4Linear
    from ..quant.int8 import Int8Linear

    with torch.device("meta"):
        layers = {"fp32": torch.nn.Linear(K, N, bias=False),
                  "fp16": torch.nn.Linear(K, N, bias=False, dtype=torch.float16),
                  "int8 per channel": Int8Linear(K, N, bias=False),
                  f"int4 groups of {group}": Int4Linear(K, N, bias=False, group_size=group)}
    return {name: sum(t.numel() * t.element_size()
                      for t in [*layer.parameters(), *layer.buffers()])
            for name, layer in layers.items()}


def gemv_speedup_bound(K: int, N: int, group: int = 64) -> float:
    """fp32 weight bytes over int4's (codes and scales) for one (K -> N) layer: the speed-up
    a memory-bound int4 GEMV can reach over fp32 at batch 1."""
    b = gemv_bytes(K, N, group)
    return b["fp32"] / b[f"int4 groups of {group}"]


def gemv_bytes_figure(shapes: dict[str, tuple[int, int]] | None = None,
                      bandwidth_gbs: float | None = None) -> go.Figure:
    """Grouped bars: weight bytes per decode step of each layer shape, per format (log).
    With ``bandwidth_gbs`` the hover adds the read's time at that bandwidth (the bound)."""
    shapes = shapes or GEMV_SHAPES
    table = {label: gemv_bytes(K, N) for label, (K, N) in shapes.items()}
    fig = go.Figure()
    for i, fmt in enumerate(next(iter(table.values()))):
        ys = [b[fmt] for b in table.values()]
        hover = [f"{y / 1e6:.3g} MB" + (f", {y / bandwidth_gbs / 1e3:.3g} µs at "
                                        f"{bandwidth_gbs:.0f} GB/s" if bandwidth_gbs else "")
                 for y in ys]
        fig.add_trace(go.Bar(x=list(table), y=[y / 1e6 for y in ys], name=fmt, text=hover,
                             hovertemplate="%{x}: %{text}<extra></extra>",
                             marker_color=COLORS[i % len(COLORS)]))
    layout(fig, "Weight bytes one decode step reads per layer", "",
           "weights read per token (MB, log)", barmode="group")
    fig.update_yaxes(type="log")
    return fig
