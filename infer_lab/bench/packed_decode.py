"""Packed weight-only decode on a CPU: tokens/s of fp32, unfused and packed int8/int4, and why.

Issue 16 asks whether fewer bytes per weight decode faster once the matmul reads the codes
(:mod:`infer_lab.quant.packed`) instead of dequantizing them on every call. At batch 1 a
decode step reads every weight once, so its speed limit is

    tokens/s <= measured bandwidth / bytes read per token     (the roofline of each format)

Three measurements, each a function returning rows (``report`` prints them):

* :func:`decode_rows` — greedy tokens/s of each scheme on one model, batch 1, runs
  alternated and the median kept (:func:`infer_lab.timing.decode_tokens_per_s`; prefill
  included), beside its bytes per token, the bandwidth that implies and the tokens it
  agrees on with fp32 and with its unfused twin.
* :func:`layer_times` — microseconds per call of one linear at a model's shapes: F.linear
  (fp32, bf16), dequantize-then-multiply, and the packed kernels in bf16 and fp32.
* :func:`profile_step` — where one decode step's time goes, by op (torch.profiler).
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..metrics import time_call
from ..quant import Int4Linear, Int8Linear, PackedInt4Linear, PackedInt8Linear, quantize_model
from ..quant.catalog import stored_bytes
from ..quant.gguf_linear import GGUFLinear
from ..quant.linear import WeightOnlyLinear
from ..surgery import shared_copy
from . import format_table

SCHEMES = ("fp32", "bf16", "int8", "int8-packed", "int8-packed+head", "int4-g64",
           "int4-g64-packed", "int4-g64-packed+head")
# Every module a decode step multiplies by in full (an embedding lookup reads B rows).
MATMULS = (nn.Linear, WeightOnlyLinear, PackedInt8Linear, PackedInt4Linear, GGUFLinear)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` inside the block (None: unchanged), then restored."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def build(fp: nn.Module, name: str) -> tuple[nn.Module, list[str]]:
    """``fp`` itself ("fp32"), a bf16 copy ("bf16"), or a quantized copy sharing ``fp``'s
    other weights; and the warnings quantizing gave (the layers a packed scheme kept)."""
    if name == "fp32":
        return fp, []
    if name == "bf16":
        return copy.deepcopy(fp).to(torch.bfloat16).eval(), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = quantize_model(shared_copy(fp), name).eval()
    return model, [str(w.message) for w in caught]


def bytes_per_token(model: nn.Module, context: int) -> float:
    """Bytes a batch-1 decode step reads: every matmul's stored weights (codes, scales,
    zeros, bias; a tied table once, by the head) and the KV cache at ``context`` tokens."""
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, MATMULS) and id(m) not in seen:
            seen.add(id(m))
            total += stored_bytes(m)
    kv = model.config.kv_bytes_per_token(model.dtype.itemsize) * context
    return float(total + kv)


def _agree(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two greedy outputs."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@torch.inference_mode()
def decode_rows(fp: nn.Module, prompt: list[int], names: Sequence[str] = SCHEMES,
                n_tokens: int = 64, repeats: int = 3, threads: int | None = 2,
                bandwidth_gbs: float | None = None, progress: bool = False
                ) -> list[dict[str, Any]]:
    """One row per scheme: greedy tokens/s at batch 1 and its ratio to fp32, bytes read per
    token, achieved GB/s (and share of ``bandwidth_gbs``), the roofline's tokens/s, and the
    greedy tokens agreeing with fp32 and with the unfused twin (name without "-packed")."""
    from ..generate import GREEDY, generate
    from ..timing import decode_tokens_per_s

    built = {n: build(fp, n) for n in names}
    models = {n: m for n, (m, _) in built.items()}
    with torch_threads(threads):
        tokens = {n: generate(m, [prompt], n_tokens, GREEDY, eos_id=None)[0]
                  for n, m in models.items()}
        tps = decode_tokens_per_s(models, prompt, n_tokens, repeats, progress=progress)
    context = len(prompt) + n_tokens // 2  # the mean context of a decode step
    base = tps.get("fp32")
    rows = []
    for n, m in models.items():
        read = bytes_per_token(m, context)
        twin = n.replace("-packed", "")
        row = {"scheme": n, "tokens_per_s": tps[n], "ms_per_token": 1e3 / tps[n],
               "vs_fp32": tps[n] / base if base else None, "mb_per_token": read / 1e6,
               "achieved_gbs": read * tps[n] / 1e9,
               "tokens_equal_fp32": _agree(tokens[n], tokens["fp32"]) if base else None,
               "tokens_equal_unfused": (_agree(tokens[n], tokens[twin])
                                        if twin != n and twin in tokens else None),
               "notes": built[n][1]}
        if bandwidth_gbs:
            row["roofline_tokens_per_s"] = bandwidth_gbs * 1e9 / read
            row["bandwidth_fraction"] = row["achieved_gbs"] / bandwidth_gbs
        rows.append(row)
    return rows


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each distinct linear of one block, and of the head."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    shapes = {"wqkv": (q + 2 * kv, cfg.d_model), "wo": (cfg.d_model, q),
              "w1": (cfg.d_ff, cfg.d_model), "w2": (cfg.d_model, cfg.d_ff),
              "lm_head": (cfg.vocab_size, cfg.d_model)}
    return shapes


def _per_call(fn: Callable[[], Any], repeats: int, budget_s: float) -> float:
    """Median seconds of one call, looping enough calls per timing to fill ``budget_s``."""
    first = min(time_call(fn, warmup=1, repeats=1))
    calls = max(1, int(budget_s / repeats / max(first, 1e-6)))
    times = time_call(lambda: [fn() for _ in range(calls)], warmup=0, repeats=repeats)
    return statistics.median(times) / calls


@torch.inference_mode()
def layer_times(shapes: dict[str, tuple[int, int]], threads: int | None = 2,
                repeats: int = 5, budget_s: float = 0.5, group_size: int = 64,
                seed: int = 0) -> list[dict[str, Any]]:
    """Microseconds per call (batch 1) and GB/s of the weight bytes, for each shape and
    each way to multiply: F.linear fp32 / bf16, dequantize-then-multiply (Int8Linear,
    Int4Linear), packed kernels with bf16 activations and with fp32 ones."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch_threads(threads):
        for layer, (n, k) in shapes.items():
            lin = nn.Linear(k, n, bias=False)
            nn.init.normal_(lin.weight, std=0.02, generator=gen)
            x = torch.randn(1, k, generator=gen)  # (1, K): one token
            i8, i4 = Int8Linear.from_linear(lin), Int4Linear.from_linear(lin, "group", group_size)
            w16 = lin.weight.detach().bfloat16()
            g = f"int4-g{group_size}"
            ways: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = {
                "F.linear fp32": (lin, x), "F.linear bf16": (lambda t, w=w16: F.linear(t, w),
                                                             x.bfloat16()),
                "int8 dequantize+F.linear": (i8, x),
                "int8 packed bf16": (PackedInt8Linear.from_layer(i8), x),
                "int8 packed fp32": (PackedInt8Linear.from_layer(i8, None), x),
                f"{g} dequantize+F.linear": (i4, x),
                f"{g} packed bf16": (PackedInt4Linear.from_layer(i4), x),
                f"{g} packed fp32": (PackedInt4Linear.from_layer(i4, None), x)}
            base = None
            for way, (f, inp) in ways.items():
                sec = _per_call(lambda f=f, inp=inp: f(inp), repeats, budget_s)
                nbytes = (stored_bytes(f) if isinstance(f, nn.Module)
                          else w16.numel() * w16.element_size())
                base = base or sec
                rows.append({"layer": layer, "shape": (n, k), "way": way, "us": sec * 1e6,
                             "vs_fp32": base / sec, "weight_mb": nbytes / 1e6,
                             "gbs": nbytes / sec / 1e9})
    return rows


@torch.inference_mode()
def profile_step(model: nn.Module, prompt: list[int], steps: int = 4, top: int = 12,
                 threads: int | None = 2) -> list[dict[str, Any]]:
    """The ``top`` ops by self CPU time over ``steps`` decode steps after ``prompt``:
    milliseconds per step, calls per step and share of all ops' time; then two totals, all
    ops (profiled) and the wall time of a step unprofiled: the gap is Python and dispatch."""
    from torch.profiler import ProfilerActivity, profile

    from ..generate import decode_one_token, prefill
    from ..kv_cache import KVCache
    from ..metrics import Timer

    with torch_threads(threads):
        cache = KVCache.for_model(model, 1, max_len=len(prompt) + 2 * steps + 3)
        tok = prefill(model, [prompt], cache).argmax(-1)  # (1,)
        for _ in range(2):  # warm-up steps, unprofiled
            tok = decode_one_token(model, tok, cache).argmax(-1)
        with Timer("cpu") as wall:
            for _ in range(steps):
                tok = decode_one_token(model, tok, cache).argmax(-1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                tok = decode_one_token(model, tok, cache).argmax(-1)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "calls_per_step": e.count / steps, "share": e.self_cpu_time_total / total}
            for e in events[:top]]
    return rows + [{"op": "(all ops, profiled)", "ms_per_step": total / 1e3 / steps,
                    "calls_per_step": sum(e.count for e in events) / steps, "share": 1.0},
                   {"op": "(wall time of a step, unprofiled)",
                    "ms_per_step": wall.elapsed * 1e3 / steps, "calls_per_step": float("nan"),
                    "share": wall.elapsed * 1e6 / total}]


def report(decode: list[dict[str, Any]] | None = None,
           layers: list[dict[str, Any]] | None = None,
           profiles: dict[str, list[dict[str, Any]]] | None = None) -> list[str]:
    """Lines of the three tables (whichever are given)."""
    lines = []
    if decode:
        lines.append(format_table(
            [[r["scheme"], r["tokens_per_s"], r["ms_per_token"],
              f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] else "-", r["mb_per_token"],
              r["achieved_gbs"], r.get("roofline_tokens_per_s", float("nan")),
              r["tokens_equal_fp32"], "-" if r["tokens_equal_unfused"] is None
              else r["tokens_equal_unfused"]] for r in decode],
            ["scheme", "tokens/s", "ms/token", "vs fp32", "MB/token", "GB/s", "roofline tok/s",
             "= fp32", "= unfused"]))
    if layers:
        lines.append(format_table(
            [[f"{r['layer']} {r['shape'][0]}x{r['shape'][1]}", r["way"], r["us"],
              f"{r['vs_fp32']:.2f}x", r["weight_mb"], r["gbs"]] for r in layers],
            ["layer (out x in)", "way", "us/call", "vs fp32", "weight MB", "GB/s"]))
    for name, rows in (profiles or {}).items():
        lines.append(f"{name}: one decode step by op (self CPU time)")
        lines.append(format_table([[r["op"], r["ms_per_step"], r["calls_per_step"],
                                    f"{r['share']:.0%}"] for r in rows],
                                  ["op", "ms/step", "calls/step", "share"]))
    return lines


def bench_packed_decode(fp: nn.Module, prompt: list[int], names: Sequence[str] = SCHEMES,
                        n_tokens: int = 64, repeats: int = 3, threads: int | None = 2,
                        profiled: Sequence[str] = ("fp32", "int8-packed+head",
                                                   "int4-g64-packed+head"),
                        with_layers: bool = True, progress: bool = False) -> dict[str, Any]:
    """All three on one model: the bandwidth measured with the same threads, the decode
    rows, each layer shape's times and the profiles of the ``profiled`` schemes."""
    from ..hardware import measure_bandwidth

    with torch_threads(threads):
        bandwidth = measure_bandwidth("cpu")
    out: dict[str, Any] = {"threads": threads, "bandwidth_gbs": bandwidth,
                           "prompt_tokens": len(prompt), "new_tokens": n_tokens}
    out["decode"] = decode_rows(fp, prompt, names, n_tokens, repeats, threads, bandwidth,
                                progress)
    if with_layers:
        out["layers"] = layer_times(model_shapes(fp.config), threads)
    out["profiles"] = {n: profile_step(build(fp, n)[0], prompt, threads=threads)
                       for n in profiled}
    return out
