"""Lab 08's runtime race: one model decoded by every runtime we have, on one chart.

* :func:`measure_runtimes`: eager fp32 and bf16, compiled (inductor's C++ over a static KV
  cache), ONNX Runtime (its own KV loop), fused int8 / int4 (PyTorch's packed CPU kernels),
  greedy, batch 1, the contenders alternated and the median kept, exactly as ``python -m
  infer_lab.bench runtimes`` builds and times them (:mod:`infer_lab.bench.runtimes`); and,
  where the scale names a GGUF model, llama.cpp beside our fused int4 on that model.
* :func:`runtimes_figure`: tokens/s of each runtime on one chart, with the figures
  recorded on the project machine (README) as a second, labelled series; a runtime that
  could not run here is a labelled gap, never a zero.
* :func:`roofline_rows`, :func:`prediction_figure`: each format's batch-1 roofline
  (bandwidth / bytes per token), computed by the learner's function once it passes, against
  the measured tokens/s.

The compiler's internals (generated code, recompiles, cold start) are in
:mod:`.lab08_runtimes_compile`; the decode-step profile in :mod:`.lab08_runtimes_profile`.
Sizes: ``scale.runtimes`` (:mod:`infer_lab.scale`).
"""

from __future__ import annotations

import gc
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from ..scale import RuntimesSizes
from .figures import COLORS, layout

PROMPT = "def read_config(path):\n    \"\"\"Read a JSON config file.\"\"\"\n"
ORDER = ("eager fp32", "eager bf16", "compiled", "onnxruntime", "fused int8", "fused int4",
         "llama.cpp")
# `python -m infer_lab.bench runtimes`, README "Compiled runtimes and fused CPU paths":
# tokens/s measured 2026-12-02 on the project's 2-core Xeon, 2 threads, 64 new tokens.
RECORDED_ON = "2026-12-02, project machine (2-core AMD EPYC, 2 threads; README)"
RECORDED = {
    "code-m": {"eager fp32": 123.35, "eager bf16": 145.74, "compiled": 357.02,
               "onnxruntime": 273.17, "fused int8": 218.84, "fused int4": 227.91},
    "smollm2": {"eager fp32": 16.19, "eager bf16": 25.07, "compiled": 38.44,
                "onnxruntime": 31.37, "fused int8": 42.29, "fused int4": 64.33,
                "llama.cpp": 97.24},
}


def has_llama_cpp() -> bool:
    """Whether llama-cpp-python is importable (found without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _row(model: str, runtime: str, tps: float | None, cold: float | None, bpw: float | None,
         note: str = "") -> dict[str, Any]:
    return {"model": model, "runtime": runtime, "tokens_per_s": tps, "cold_start_s": cold,
            "bytes_per_weight": bpw, "note": note}


def _timed(cs: dict, sizes: RuntimesSizes, progress: bool, what: str) -> dict[str, list[float]]:
    """interleaved_times over the contenders, with a tqdm bar when ``progress``."""
    from tqdm.auto import tqdm

    from ..bench import interleaved_times

    bar = tqdm(total=len(cs) * (sizes.repeats + 1), desc=what) if progress else None
    try:
        return interleaved_times({k: c.call for k, c in cs.items()}, sizes.repeats, warmup=1,
                                 progress=bar)
    finally:
        if bar is not None:
            bar.close()


ZOO_RUNTIMES = ("eager fp32", "eager bf16", "onnxruntime", "fused int8", "fused int4")
REAL_RUNTIMES = ("eager fp32", "fused int4", "llama.cpp")


def _skip(wanted: tuple[str, ...]) -> list[str]:
    """bench runtimes' contenders to leave out: all but ``wanted`` (compiles are costly)."""
    from ..bench.runtimes import KINDS

    return [k for k in KINDS if k not in wanted]


def _order(runtime: str) -> int:
    return ORDER.index(runtime) if runtime in ORDER else len(ORDER)


def measure_runtimes(model, tok, sizes: RuntimesSizes, workdir: str | Path,
                     progress: bool = False) -> list[dict[str, Any]]:
    """One row per runtime on ``sizes.model`` (and llama.cpp's model when the scale names
    one): tokens/s, cold start (seconds before the first token), bytes per weight, note."""
    rows = _measure_zoo(model, tok, sizes, workdir, progress)
    gc.collect()  # the zoo's copies, graph and ORT session, before a real model loads
    rows.append(_row(sizes.model, "llama.cpp", None, None, None,
                     "llama.cpp runs GGUF files: the zoo models have none"))
    if sizes.real_model is None:
        why = ("not measured at this scale (set INFER_LAB_SCALE=laptop)" if has_llama_cpp()
               else "not measured: llama-cpp-python is not installed")
        rows.append(_row("smollm2", "llama.cpp", None, None, None, why))
    else:
        rows += measure_real(sizes, workdir, progress)
    return sorted(rows, key=lambda r: (r["model"] != sizes.model, _order(r["runtime"])))


def _measure_zoo(model, tok, sizes: RuntimesSizes, workdir: str | Path, progress: bool
                 ) -> list[dict[str, Any]]:
    from ..bench import median
    from ..bench.runtimes import Contender, contenders
    from ..runtimes.compiled import CompiledDecoder

    prompt = tok.encode(PROMPT)
    n = sizes.new_tokens
    cs = contenders(sizes.model, model, prompt, n, 0.0, _skip(ZOO_RUNTIMES), Path(workdir))
    dec = CompiledDecoder(model, 1, len(prompt) + n)
    t0 = time.perf_counter()
    dec.generate([prompt], n)  # the first call compiles: the cold start
    cold = time.perf_counter() - t0
    cs["compiled"] = Contender(lambda: dec.generate([prompt], n)[0], 4.0, cold)
    times = _timed(cs, sizes, progress, f"{sizes.model}: timed runs")
    return [_row(sizes.model, k, n / median(times[k]), c.cold_start_s, c.bytes_per_weight,
                 "" if k != "compiled" or dec.compiled else f"eager fallback: "
                 f"{dec.fallback_reason}") for k, c in cs.items()]


def measure_real(sizes: RuntimesSizes, workdir: str | Path, progress: bool = False
                 ) -> list[dict[str, Any]]:
    """Eager fp32, fused int4 and llama.cpp on the GGUF model, the same prompt and tokens."""
    import infer_lab

    from ..bench import median
    from ..bench.runtimes import contenders
    from ..chat import chat_prompt
    from .models import real_model_installed

    if not real_model_installed(sizes.real_model):
        return [_row("smollm2", "llama.cpp", None, None, None,
                     f"not measured: {sizes.real_model} is not installed")]
    t0 = time.perf_counter()
    model, tok = infer_lab.load(sizes.real_model, device="cpu", dtype=torch.float32)
    loaded = time.perf_counter() - t0
    prompt = tok.encode(chat_prompt(tok, [{"role": "user", "content": "Write a Python "
                                           "function that checks whether a number is prime."}]))
    n = sizes.real_tokens
    cs = contenders("smollm2", model, prompt, n, loaded, _skip(REAL_RUNTIMES), Path(workdir))
    times = _timed(cs, sizes, progress, "smollm2: timed runs")
    rows = [_row("smollm2", k, n / median(times[k]), c.cold_start_s, c.bytes_per_weight)
            for k, c in cs.items()]
    if "llama.cpp" not in cs:
        rows.append(_row("smollm2", "llama.cpp", None, None, None,
                         "not measured: llama-cpp-python is not installed"))
    del cs, model
    gc.collect()
    return rows


def runtimes_figure(rows: list[dict[str, Any]], recorded: bool = True) -> go.Figure:
    """Tokens/s by runtime, one group of bars per model; recorded figures beside them."""
    fig = go.Figure()
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, m in enumerate(models):
        got = [r for r in rows if r["model"] == m]
        x = [r["runtime"] for r in got]
        y = [r["tokens_per_s"] or 0 for r in got]
        text = [f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else r["note"] for r in got]
        fig.add_trace(go.Bar(x=x, y=y, name=f"{m}: measured now", marker_color=COLORS[i],
                             text=text, textposition="outside", cliponaxis=False,
                             hovertext=[r["note"] or f"cold start {r['cold_start_s']:.1f} s"
                                        for r in got]))
    if recorded:
        for j, (m, values) in enumerate(RECORDED.items()):
            fig.add_trace(go.Bar(x=list(values), y=list(values.values()),
                                 name=f"{m}: recorded {RECORDED_ON}",
                                 marker={"color": COLORS[len(models) + j],
                                         "pattern": {"shape": "/"}}, opacity=0.6,
                                 text=[f"{v:.0f}" for v in values.values()],
                                 textposition="outside"))
    layout(fig, "Batch-1 greedy decode: every runtime (log scale; text = gap's reason)",
           "runtime", "tokens/s (log)", barmode="group", height=480)
    fig.update_yaxes(type="log")
    fig.update_xaxes(categoryorder="array", categoryarray=list(ORDER))
    return fig


def rows_table(rows: list[dict[str, Any]]) -> str:
    """The rows as text: tokens/s, ms/token, cold start, bytes per weight, note."""
    from ..bench import format_table

    fmt = lambda v, f: "-" if v is None else f.format(v)
    return format_table([[r["model"], r["runtime"], fmt(r["tokens_per_s"], "{:.1f}"),
                          fmt(r["tokens_per_s"] and 1e3 / r["tokens_per_s"], "{:.2f}"),
                          fmt(r["cold_start_s"], "{:.2f}"), fmt(r["bytes_per_weight"], "{:.3g}"),
                          r["note"]] for r in rows],
                        ["model", "runtime", "tokens/s", "ms/token", "cold start s",
                         "bytes/weight", "note"])


def roofline_rows(rows: list[dict[str, Any]], config, bandwidth_gbs: float,
                  predict: Callable[[int, float, float], float]) -> list[dict[str, Any]]:
    """For each measured row of ``config``'s model: ``predict(matmul_params, bytes_per_weight,
    bandwidth_gbs)`` (the roofline) beside the measured tokens/s and their ratio."""
    from ..hardware import matmul_params

    params = matmul_params(config)
    out = []
    for r in rows:
        if r["tokens_per_s"] and r["bytes_per_weight"] and r["model"] != "smollm2":
            roof = float(predict(params, r["bytes_per_weight"], bandwidth_gbs))
            out.append({**r, "roofline_tokens_per_s": roof,
                        "fraction": r["tokens_per_s"] / roof if roof else float("nan")})
    return out


def prediction_figure(rows: list[dict[str, Any]], bandwidth_gbs: float) -> go.Figure:
    """Predicted (roofline) against measured tokens/s, per runtime, on a log axis."""
    x = [r["runtime"] for r in rows]
    fig = go.Figure([
        go.Bar(x=x, y=[r["roofline_tokens_per_s"] for r in rows], name="your roofline "
               f"(bandwidth {bandwidth_gbs:.1f} GB/s / bytes per token)", marker_color=COLORS[7],
               opacity=0.5),
        go.Bar(x=x, y=[r["tokens_per_s"] for r in rows], name="measured", marker_color=COLORS[0],
               text=[f"{r['fraction']:.0%} of roof" for r in rows], textposition="outside")])
    layout(fig, "Roofline prediction vs measurement, batch-1 decode", "runtime",
           "tokens/s (log)", barmode="overlay", height=440)
    fig.update_yaxes(type="log")
    return fig
