"""One benchmark row per implementation of a kernel: the shape every ``benchmark()`` returns.

Each kernel file's ``benchmark()`` builds its inputs and says what one call moves (bytes)
or computes (FLOPs); :func:`timed_rows` times each implementation (median of ``repeats``
calls, :func:`infer_lab.metrics.time_call`) and turns the counts into GB/s and TFLOP/s.
The Triton kernel is timed only where it runs compiled: under the interpreter (a CPU) its
row says "unmeasured", because the interpreter runs each program in numpy, a correctness
tool whose speed says nothing about the kernel.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from ..metrics import time_call

UNMEASURED = "unmeasured (interpreter is not a speed)"


def timed_rows(row: dict[str, Any], impls: dict[str, Callable[[], Any]], compiled: bool,
               device: torch.device, repeats: int, moved: int | dict[str, int] | None = None,
               flops: float | None = None, notes: dict[str, str] | None = None,
               warmup: bool = False) -> list[dict[str, Any]]:
    """Rows ``{**row, impl, ms, bytes, GB/s, TFLOP/s, note}`` for each of ``impls``
    (zero-argument calls). ``"triton"`` is timed only when ``compiled``; else its row has
    ``ms`` None and the note :data:`UNMEASURED`. ``moved``: bytes per call, one number or
    one per implementation (an unfused chain moves more than the fused kernel).
    ``warmup``: call once before timing (autotuning picks its configuration on the first
    call of a shape)."""
    out = []
    for impl, fn in impls.items():
        nbytes = moved.get(impl) if isinstance(moved, dict) else moved
        base = {**row, "impl": impl, "bytes": nbytes, "note": (notes or {}).get(impl, "")}
        if impl == "triton" and not compiled:
            out.append({**base, "ms": None, "GB/s": None, "TFLOP/s": None, "note": UNMEASURED})
            continue
        if warmup:
            fn()
        sec = statistics.median(time_call(fn, device=device, repeats=repeats))
        out.append({**base, "ms": sec * 1e3,
                    "GB/s": nbytes / sec / 1e9 if nbytes is not None else None,
                    "TFLOP/s": flops / sec / 1e12 if flops is not None else None})
    return out
