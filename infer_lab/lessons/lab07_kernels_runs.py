"""Lab 07's kernels at work and measured: code-m's attention scores through the softmax
kernels, one of its layers quantized to int4 through the GEMV kernel, their times on a GPU,
and every kernel on this machine's roofline (Williams et al. 2009).

The model hands q, k and v to its cache (the one contract every attention path goes
through: :mod:`infer_lab.kv_cache`), so :class:`RecordingCache` keeps one layer's
while attending as :class:`~infer_lab.kv_cache.NoCache` does. A kernel (the learner's once
it passed its check, else the package's) then computes the softmax of those scores, and the
lab checks it against torch.softmax and against the model's own attention output.

Times: a kernel is timed only where it runs compiled (a CUDA GPU); under the interpreter
the line says it is unmeasured and times the PyTorch reference alone. On the roofline an
unmeasured kernel is a dotted line at its arithmetic intensity, never a point.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import plotly.graph_objects as go
import torch

from ..hardware import HardwareSpec
from ..kernels import (
    flash_attention,
    matmul,
    online_softmax,
    paged_attention,
    quant_gemv,
    rmsnorm,
    runtime,
    softmax,
    swiglu,
    vector_add,
)
from ..kernels.check import device_or_default
from ..kv_cache import NoCache, Step, sdpa
from ..metrics import time_call
from ..scale import KernelsSizes
from .lab07_kernels import can_launch, unmeasured


class RecordingCache(NoCache):
    """No memory, like NoCache; keeps the (q, k, v) that layer ``layer`` attended with."""

    def __init__(self, batch: int, device: torch.device | str, layer: int):
        super().__init__(batch, device)
        self.layer, self.qkv = layer, None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        if layer == self.layer:
            self.qkv = (q, k, v)  # (1, H, T, D), (1, H_kv, T, D), (1, H_kv, T, D)
        return super().attend(layer, q, k, v, step)


@torch.no_grad()
def attention_inputs(model, tokens: list[int], layer: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k, v (after RoPE) that ``layer`` of ``model`` attends with on ``tokens``."""
    cache = RecordingCache(1, model.device, layer)
    model(torch.tensor([tokens], device=model.device), cache=cache, last_only=True)
    return cache.qkv


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal attention logits (H, T, T) of one sequence: q k^T / sqrt(d), -inf where a
    query would see a later key. GQA: each KV head serves n_head / n_kv_head query heads."""
    H, T, D = q.shape[1], q.shape[2], q.shape[3]
    k = k.repeat_interleave(H // k.shape[1], dim=1)  # (1, H, T, D)
    s = q[0].float() @ k[0].float().transpose(-1, -2) / math.sqrt(D)  # (H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(future, float("-inf"))


def softmax_on_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel) -> dict:
    """The fused softmax ``kernel`` on every row of the causal scores (H * T rows), then the
    weights times V against the model's attention output (SDPA)."""
    s = scores(q, k)  # (H, T, T)
    p = softmax.softmax_triton(s, kernel=kernel) if can_launch(s.device) \
        else softmax.softmax_reference(s)
    out = p @ v[0].float().repeat_interleave(q.shape[1] // v.shape[1], dim=0)  # (H, T, D)
    model_out = sdpa(q.float(), k.float(), v.float(), None)[0]  # (H, T, D)
    return {"rows": s.shape[0] * s.shape[1], "cols": s.shape[2],
            "max |p - torch.softmax|": float((p - torch.softmax(s, -1)).abs().max()),
            "max |p V - model's attention|": float((out - model_out).abs().max())}


def online_on_last_query(q: torch.Tensor, k: torch.Tensor, block: int, kernel
                         ) -> tuple[dict, list[tuple[float, float]]]:
    """The online softmax ``kernel`` on the last query's row of every head (H rows of T),
    in tiles of ``block``; with head 0's (m, l) after each tile (the PyTorch loop)."""
    rows = scores(q, k)[:, -1].contiguous()  # (H, T): the newest token sees every key
    p = online_softmax.online_softmax_triton(rows, block=block, kernel=kernel) \
        if can_launch(rows.device) else online_softmax.online_softmax_reference(rows)
    trace = [(float(m[0]), float(l[0])) for m, l in online_softmax.running_stats(rows.cpu(),
                                                                                 block)]
    return ({"rows": rows.shape[0], "cols": rows.shape[1], "tiles": len(trace),
             "max |p - torch.softmax|": float((p - torch.softmax(rows, -1)).abs().max())},
            trace)


@torch.no_grad()
def int4_layer_check(model, tokens: list[int], kernel, group: int = 64) -> dict:
    """code-m's first MLP up-projection quantized to int4 (groups of ``group``), applied to
    the hidden state of the last token by the int4 GEMV ``kernel``: against the layer's
    reference forward (dequantize, F.linear) and the fp layer it came from."""
    from ..quant.catalog import stored_bytes
    from ..quant.int4 import Int4Linear

    mlp = model.layers[0].mlp
    seen = {}
    hook = mlp.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    try:
        model(torch.tensor([tokens], device=model.device), last_only=True)
    finally:
        hook.remove()
    x = seen["x"][:, -1]  # (1, d_model): one decode step's input
    fp = mlp.w1
    layer = Int4Linear.from_linear(fp, "group", group, True).to(x.device)
    args = (x, layer.qweight, layer.scale, layer.zero, None)
    y = quant_gemv.int4_gemv_triton(*args, kernel=kernel) if can_launch(x.device) \
        else quant_gemv.int4_gemv_reference(*args)
    return {"shape": f"(1, {fp.in_features}) x ({fp.in_features} -> {fp.out_features})",
            "max |kernel - Int4Linear forward|": float((y - layer(x)).abs().max()),
            "max |int4 - fp layer| (quantization error)": float((y - fp(x)).abs().max()),
            "weight bytes fp": stored_bytes(fp), "weight bytes int4": stored_bytes(layer)}


def time_line(kernel_call: Callable[[], object], reference_call: Callable[[], object],
              names: tuple[str, str], device: torch.device | str, repeats: int) -> str:
    """One line of median times: the kernel's only where it runs compiled."""
    ref_ms = statistics.median(time_call(reference_call, device=device, repeats=repeats)) * 1e3
    if runtime.backend(torch.empty(0, device=device)) != "triton":
        return f"{names[1]}: {ref_ms:.3f} ms; {names[0]}: {unmeasured(device)}"
    ms = statistics.median(time_call(kernel_call, device=device, repeats=repeats)) * 1e3
    return (f"{names[0]}: {ms:.3f} ms, {names[1]}: {ref_ms:.3f} ms "
            f"(speed-up {ref_ms / ms:.2f}x)")


@torch.no_grad()
def int4_time_line(shape: tuple[int, int, int], kernel, device: torch.device | str,
                   repeats: int, group: int = 64) -> str:
    """A decode-shaped (M, K, N) int4 GEMV through ``kernel`` against F.linear on the dense
    weight it replaces (16-bit on a GPU): the comparison int4 has to win."""
    from ..quant.int4 import Int4Linear

    M, K, N = shape
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    dense = torch.nn.Linear(K, N, bias=False).to(device, dtype)
    layer = Int4Linear.from_linear(dense, "group", group, True).to(device)
    x = torch.randn(M, K, device=device, dtype=dtype)
    args = (x, layer.qweight, layer.scale, layer.zero, None)
    return time_line(lambda: quant_gemv.int4_gemv_triton(*args, kernel=kernel),
                     lambda: dense(x), (f"int4 GEMV {shape}", f"dense {str(dtype)[6:]} F.linear"),
                     device, repeats)


# -- roofline ---------------------------------------------------------------------------------
def _flops(row: dict) -> float:
    """FLOPs of one call (one per add, multiply, compare or exp), from the row's shape."""
    name, shape = row["kernel"], row.get("size", row.get("shape"))
    if row.get("TFLOP/s") and row.get("ms"):
        return row["TFLOP/s"] * 1e12 * row["ms"] / 1e3
    n = shape if isinstance(shape, int) else None
    per_element = {"vector_add": 1, "softmax": 5, "online_softmax": 5, "rmsnorm": 4,
                   "swiglu": 5}
    if name in per_element:
        return per_element[name] * (n if n is not None else shape[0] * shape[1])
    if name == "matmul":
        M, K, N = shape
        return 2 * M * K * N
    if name == "flash_attention":
        B, H, _, T, D = shape
        return 4 * B * H * T * T * D / 2  # causal: half of q k^T and p v
    if name == "paged_attention":
        B, H, _, ctx, D = shape
        return 4 * B * H * ctx * D
    M, K, N = shape  # int4 / int8 GEMV and its dense twin
    return 2 * M * K * N


def kernel_roofline(sizes: KernelsSizes, device: torch.device | str | None = None,
                    progress=None) -> list[dict]:
    """Every kernel's benchmark rows at the lab's sizes, each with its ``FLOP``,
    ``intensity`` (FLOP/byte moved) and ``FLOP/s`` (None where unmeasured)."""
    device = device_or_default(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    R, C = sizes.bench_rows
    kw = {"repeats": sizes.repeats, "dtype": dtype, "device": device}
    jobs = [lambda: vector_add.benchmark(sizes=(R * C,), **kw),
            lambda: softmax.benchmark(sizes=((R, C),), **kw),
            lambda: online_softmax.benchmark(sizes=((R, C),), **kw),
            lambda: rmsnorm.benchmark(sizes=((R, C),), **kw),
            lambda: swiglu.benchmark(sizes=((R, C),), **kw),
            lambda: matmul.benchmark(sizes=(sizes.bench_matmul,), **kw),
            lambda: flash_attention.benchmark(shapes=[sizes.bench_attention], **kw),
            lambda: paged_attention.benchmark(shapes=[sizes.bench_paged], **kw),
            lambda: quant_gemv.benchmark(shapes=[sizes.bench_gemv], bits=4, **kw)]
    rows = []
    for job in (progress(jobs) if progress else jobs):
        for r in job():
            flops, moved = _flops(r), r.get("bytes") or _matmul_bytes(r)
            rows.append({**r, "bytes": moved, "FLOP": flops, "intensity": flops / moved,
                         "FLOP/s": flops / (r["ms"] / 1e3) if r.get("ms") else None})
    return rows


def _matmul_bytes(row: dict) -> int:
    """A matmul's rows count FLOPs only: A and B read once, C written once (the minimum)."""
    M, K, N = row["size"]
    return (M * K + K * N + M * N) * getattr(torch, row["dtype"].split(".")[-1]).itemsize


def roofline_figure(hw: HardwareSpec, rows: list[dict], dtype: str = "fp32") -> go.Figure:
    """The machine's measured roof, each timed implementation as a point, and each
    unmeasured kernel as a dotted line at its intensity (where it would sit, not a time)."""
    from .lab00_welcome import roofline_figure as roof

    timed = [(f"{r['kernel']} ({r['impl']})", r["intensity"], r["FLOP/s"])
             for r in rows if r["FLOP/s"]]
    lo = min(r["intensity"] for r in rows) / 3
    hi = max(r["intensity"] for r in rows) * 3
    fig = roof([hw], dtype, timed, (min(lo, 0.05), max(hi, 2 * hw.ridge(dtype))))
    fig.update_traces(textfont={"size": 9}, selector={"mode": "markers+text"})
    for r in rows:
        if r["FLOP/s"] is None:
            fig.add_vline(x=r["intensity"], line={"color": "gray", "dash": "dot", "width": 1},
                          annotation_text=f"{r['kernel']} triton: unmeasured",
                          annotation_textangle=-90, annotation_font_size=9)
    fig.update_layout(title=f"Each kernel against {hw.name}'s measured roofline ({dtype})",
                      height=560, showlegend=False)
    return fig
