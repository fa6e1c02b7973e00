"""Lab 08's look inside torch.compile: generated code, recompiles, cold start, CUDA graphs.

* :func:`dequant_matmul_code`: an int8 weight-only dequantize-then-multiply, ``x @ (q * s)^T``,
  compiled by inductor on the CPU, written two ways. As a matmul, inductor hands the
  product to a library GEMM (``extern_kernels.mm``), which needs a real fp32 weight: it
  emits one C++ kernel that dequantizes all N x K codes into a buffer, then calls mm.
  As a reduction (``(x * q * s).sum(-1)``, the GEMV a decode step is), inductor generates
  the loop itself and the int8 load, convert and scale sit *inside* the reduction loop:
  no fp32 weight ever exists (gpt-fast's int8 path; a Triton GEMV on a GPU).
* :func:`recompile_rows`: a function compiled with static shapes recompiles for every
  new sequence length (each a cold start); marked dynamic it compiles once. Our
  :class:`~infer_lab.runtimes.compiled.CompiledDecoder` keeps one shape per step through
  a static KV cache, so it compiles one graph.
* :class:`BreakEvenExplorer`: cold start against tokens served; the break-even point comes
  from the learner's ``break_even_tokens`` once it passes.
* :func:`cuda_graphs_line`: CUDA graphs (``mode="reduce-overhead"``) timed on a GPU, and
  "not measured: no GPU" elsewhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch

from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


def _as_matmul(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    w = q.to(torch.float32) * s[:, None]  # (N, K) dequantized
    return x @ w.t()  # (1, N)


def _as_reduction(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    # (1, 1, K) * (N, K): the GEMV as a sum over K, so the compiler owns the loop
    return (x[:, None, :] * q.to(torch.float32)).sum(-1) * s  # (1, N)


def dequant_matmul_code(shape: tuple[int, int], seed: int = 0, repeats: int = 20
                        ) -> dict[str, dict[str, Any]]:
    """Compile both forms on the CPU: {form: {"code", "kernels", "extern_mm", "us",
    "max_err"}}, plus the eager dequantize-then-multiply's time under "eager"."""
    from torch._inductor.utils import run_and_get_code

    from ..metrics import time_call

    N, K = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)  # (N, K) codes
    s = torch.rand(N, generator=g) * 0.01 + 1e-3  # (N,) per-channel scales
    x = torch.randn(1, K, generator=g)  # (1, K): one token
    want = _as_matmul(x, q, s)
    out: dict[str, dict[str, Any]] = {}
    for form, fn in (("as a matmul", _as_matmul), ("as a reduction", _as_reduction)):
        compiled = torch.compile(fn, dynamic=False)
        got, codes = run_and_get_code(compiled, x, q, s)
        code = "\n".join(codes)
        t = min(time_call(lambda c=compiled: c(x, q, s), warmup=2, repeats=repeats))
        out[form] = {"code": code, "kernels": cpp_kernels(code),
                     "extern_mm": "extern_kernels.mm" in code or "aten.mm" in code,
                     "us": t * 1e6, "max_err": float((got - want).abs().max())}
    out["eager"] = {"us": min(time_call(lambda: _as_matmul(x, q, s), warmup=2,
                                        repeats=repeats)) * 1e6}
    return out


def cpp_kernels(code: str) -> list[str]:
    """The C++ kernels in inductor's generated module (the raw strings it compiles)."""
    return re.findall(r"async_compile\.cpp_pybinding\([^\n]*r'''\n(.*?)'''", code, re.DOTALL)


def kernel_excerpt(kernel: str, context: int = 2) -> str:
    """The loop lines of a C++ kernel that load int8 codes or accumulate, with a few lines
    around them, each marked: where the dequantization and the reduction went."""
    lines = kernel.splitlines()
    marks = {}
    for i, ln in enumerate(lines):
        if "int8_t" in ln and ("load" in ln or "in_ptr" in ln) and "const int8_t*" not in ln:
            marks[i] = "<-- int8 codes loaded"
        elif re.search(r"\.store\(|out_ptr\d+\[.*\]\s*=", ln):
            marks[i] = "<-- written to memory"
        elif "convert<float>" in ln:
            marks[i] = "<-- int8 -> fp32 (the dequantization)"
        elif re.search(r"tmp_acc\d*(_vec)?\s*=\s*tmp_acc", ln):
            marks[i] = "<-- accumulate (the reduction over K)"
    keep = sorted({j for i in marks for j in range(i - context, i + context + 1)
                   if 0 <= j < len(lines)})
    out, last = [], -2
    for j in keep:
        if j != last + 1:
            out.append("    ...")
        out.append(f"{lines[j].rstrip()[:110]:<110} {marks.get(j, '')}".rstrip())
        last = j
    return "\n".join(out)


def where_dequant_went(result: dict[str, Any]) -> str:
    """One sentence per compiled form: whether an fp32 weight was materialized."""
    ks = result["kernels"]
    in_loop = any("int8_t" in k and ("tmp_acc" in k or "reduce" in k) for k in ks)
    if result["extern_mm"]:
        return (f"{len(ks)} C++ kernel(s) then extern_kernels.mm: the codes are dequantized "
                "into a full fp32 weight buffer first (N x K x 4 bytes written and read "
                "again), because a library GEMM takes only a dense float matrix")
    if in_loop:
        return (f"{len(ks)} C++ kernel(s), no library call: the int8 load and its convert to "
                "fp32 are inside the reduction loop over K (the per-row scale multiplies the "
                "sum once, after it), so only the codes cross memory")
    return f"{len(ks)} C++ kernel(s)"


def recompile_rows(lengths: tuple[int, ...], dim: int = 64) -> list[dict[str, Any]]:
    """Call a small compiled function on each sequence length in turn, then each again:
    seconds of every call and the graphs dynamo compiled for it (static, then dynamic)."""
    from ..runtimes.compiled import graph_count

    def block(x: torch.Tensor) -> torch.Tensor:  # a norm and a softmax: shapes matter
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return torch.softmax(x @ x.transpose(-1, -2), -1) @ x  # (T, dim)

    rows = []
    for mode, dynamic in (("static shapes", False), ("dynamic shapes", True)):
        torch._dynamo.reset()  # forget earlier graphs: each mode starts cold
        fn = torch.compile(block, dynamic=dynamic)
        for rnd in ("first call", "again"):
            for T in lengths:
                x = torch.randn(T, dim)
                before, t0 = graph_count(), time.perf_counter()
                fn(x)
                rows.append({"mode": mode, "round": rnd, "length": T,
                             "seconds": time.perf_counter() - t0,
                             "new_graphs": graph_count() - before})
    torch._dynamo.reset()
    return rows


def recompile_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Seconds per call, by sequence length, static vs dynamic shapes, first call vs again."""
    fig = go.Figure()
    for i, mode in enumerate(dict.fromkeys(r["mode"] for r in rows)):
        for rnd, dash in (("first call", "solid"), ("again", "dot")):
            got = [r for r in rows if r["mode"] == mode and r["round"] == rnd]
            fig.add_trace(go.Scatter(
                x=[f"T={r['length']}" for r in got], y=[r["seconds"] * 1e3 for r in got],
                mode="lines+markers+text", name=f"{mode}, {rnd}",
                text=[f"+{r['new_graphs']} graph" if r["new_graphs"] else "" for r in got],
                textposition="top center", line={"color": COLORS[i], "dash": dash}))
    layout(fig, "A new shape is a new compile (static) unless the graph is dynamic",
           "input shape, in call order", "ms per call (log)", height=420)
    fig.update_yaxes(type="log")
    return fig


class BreakEvenExplorer(Explorer):
    """Time to serve n tokens, eager (n t_eager) vs compiled (compile + n t_compiled)."""

    def __init__(self, compile_s: float, eager_ms: float, compiled_ms: float,
                 break_even: Callable[[float, float, float], float]):
        self.break_even = break_even
        slider = lambda v, lo, hi, d: W.FloatLogSlider(
            value=v, base=10, min=lo, max=hi, step=0.05, description=d, continuous_update=False,
            style={"description_width": "150px"}, layout={"width": "520px"})
        self.compile = slider(max(compile_s, 0.1), -1, 3, "compile (cold start) s")
        self.eager = slider(max(eager_ms, 0.01), -2, 3, "eager ms/token")
        self.fast = slider(max(compiled_ms, 0.01), -2, 3, "compiled ms/token")
        self.controls = W.VBox([self.compile, self.eager, self.fast])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.compile, self.eager, self.fast)
        self.update()

    def build(self) -> tuple[go.Figure, float]:
        c, te, tc = self.compile.value, self.eager.value / 1e3, self.fast.value / 1e3
        n_even = float(self.break_even(c, te, tc))
        top = max(10.0, 3 * n_even if n_even < float("inf") else 10 * c / max(te, 1e-9))
        n = [top * i / 50 for i in range(51)]
        fig = go.Figure([
            go.Scatter(x=n, y=[k * te for k in n], name="eager: n x ms/token",
                       line={"color": COLORS[0]}),
            go.Scatter(x=n, y=[c + k * tc for k in n], name="compiled: cold start + n x ms/token",
                       line={"color": COLORS[1]})])
        if n_even < float("inf"):
            fig.add_vline(x=n_even, line_dash="dash",
                          annotation_text=f"break-even: {n_even:,.0f} tokens")
        layout(fig, "Cold start vs tokens served", "tokens served", "seconds", height=380)
        return fig, n_even

    def update(self) -> None:
        fig, n_even = self.build()
        swap_figure(self.figure, fig)
        self.readout.value = ("<b>never</b>: compiled is not faster per token"
                              if n_even == float("inf") else
                              f"compiling pays off after <b>{n_even:,.0f}</b> tokens")


def cuda_graphs_line(model, prompt: list[int], n: int) -> str:
    """Compiled with CUDA graphs vs eager on a GPU (tokens/s), or why it is not measured."""
    if not torch.cuda.is_available():
        return "CUDA graphs: not measured: no GPU (this runs on a CUDA machine)"
    import copy

    from ..generate import generate
    from ..runtimes.compiled import CompiledDecoder

    gpu = copy.deepcopy(model).to("cuda")
    dec = CompiledDecoder(gpu, 1, len(prompt) + n)  # mode="reduce-overhead" on CUDA
    dec.generate([prompt], n)  # compile and record the graph
    times = {}
    for name, call in (("eager", lambda: generate(gpu, [prompt], n, eos_id=None)),
                       ("CUDA graphs", lambda: dec.generate([prompt], n))):
        call()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times[name] = time.perf_counter() - t0
    return (f"CUDA graphs on {torch.cuda.get_device_name()}: {n / times['CUDA graphs']:.0f} "
            f"tokens/s vs eager {n / times['eager']:.0f} "
            f"({times['eager'] / times['CUDA graphs']:.2f}x), {dec.graphs} graph(s), "
            f"cold start {dec.compile_seconds or 0:.1f} s")
