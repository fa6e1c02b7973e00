"""``python -m infer_lab.bench kernels``: every kernel of :mod:`infer_lab.kernels`, timed
beside its PyTorch reference, with the bytes (or FLOPs) it moves per second.

Each kernel file's ``benchmark()`` gives the rows. On a CPU only the references are timed
and every Triton row says "unmeasured": Triton's interpreter is a correctness tool (well
under 1 GB/s), not a speed, so no CPU run ever reports a kernel's speed. On CUDA the
``ratios`` compare kernel and reference at the largest size measured, named
``<kernel>_vs_reference`` (``flash_vs_sdpa``, ``paged_vs_gather`` for the two whose
references are SDPA and the gathering read), ``int4_gemv_vs_fp16`` is the dense fp16
layer's time over the int4 kernel's at the decode shape (M = 1), and
``fused_rmsnorm_bandwidth_fraction`` is the fused norm's GB/s over the device's measured
copy bandwidth. Every row also says its fraction of that bandwidth (or of the measured
matmul peak, for rows that count FLOPs): the "of peak" column.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import torch

from . import format_table

KERNELS = ("vector_add", "softmax", "online_softmax", "rmsnorm", "swiglu", "matmul",
           "flash_attention", "paged_attention", "quant_gemv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=KERNELS,
                        help="which kernels to time (default: all)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row (median; default 10, --quick 2)")


def collect(names: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        mod = importlib.import_module(f"infer_lab.kernels.{name}")
        runs = ([{"bits": 8}, {"bits": 4}] if name == "quant_gemv" else [{}])
        for kw in runs:
            rows += [{**row, "module": name} for row in mod.benchmark(repeats=repeats, **kw)]
    return rows


def add_peak_fractions(rows: list[dict[str, Any]], hw) -> None:
    """Each timed row's share of the measured peak: GB/s over the copy bandwidth, or
    TFLOP/s over the matmul peak of its dtype when the row counts no bytes."""
    for r in rows:
        if r.get("GB/s"):
            r["of peak"] = r["GB/s"] / hw.mem_bandwidth_gbs
        elif r.get("TFLOP/s"):
            r["of peak"] = r["TFLOP/s"] * 1e12 / hw.flops(getattr(torch, r["dtype"].replace("torch.", "")))


def int4_vs_fp16(rows: list[dict[str, Any]]) -> float | None:
    """Dense fp16 F.linear time / int4 kernel time at the decode shape (M = 1)."""
    at = {r["impl"]: r["ms"] for r in rows if r["kernel"] == "int4_gemv" and r.get("ms")
          and r["shape"][0] == 1 and r["dtype"] == "torch.float16"}
    return at["dense"] / at["triton"] if {"dense", "triton"} <= at.keys() else None


# The names for the ratios whose reference is the baseline they name.
NAMED = {"flash_attention": "flash_vs_sdpa", "paged_attention": "paged_vs_gather"}


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Reference time / kernel time at each kernel's last (largest) measured size."""
    out = {}
    for name in dict.fromkeys(r["kernel"] for r in rows):
        timed = {r["impl"]: r for r in rows if r["kernel"] == name and r.get("ms")}
        if "triton" in timed and "reference" in timed:
            key = NAMED.get(name, f"{name}_vs_reference")
            out[key] = timed["reference"]["ms"] / timed["triton"]["ms"]
    return out


def _cell(v: Any) -> Any:
    return "-" if v is None else v


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..hardware import default_device, probe

    device = default_device()
    repeats = args.repeats or (2 if args.quick else 10)
    rows = collect(args.kernels, repeats)
    result: dict[str, Any] = {"device": str(device), "rows": rows, "ratios": ratios(rows)}
    dtypes = tuple(dict.fromkeys(getattr(torch, r["dtype"].replace("torch.", ""))
                                 for r in rows if r.get("TFLOP/s")))
    hw = probe(device, dtypes=dtypes or None, bandwidth_mb=1024 if device.type == "cuda" else 256,
               repeats=3)
    result["peak"] = {"GB/s": hw.mem_bandwidth_gbs, "TFLOP/s": hw.tflops}
    add_peak_fractions(rows, hw)
    if int4_vs_fp16(rows) is not None:
        result["ratios"]["int4_gemv_vs_fp16"] = int4_vs_fp16(rows)
    if device.type == "cuda":
        fused = [r for r in rows if r["kernel"] == "rmsnorm" and r["impl"] == "triton"
                 and r.get("GB/s")]
        if fused:
            result["ratios"]["fused_rmsnorm_bandwidth_fraction"] = (
                fused[-1]["GB/s"] / hw.mem_bandwidth_gbs)
    table = [[r["kernel"], str(r.get("size", r.get("shape", ""))), r.get("dtype", ""),
              r["impl"], _cell(r.get("ms")), _cell(r.get("GB/s")), _cell(r.get("TFLOP/s")),
              "-" if r.get("of peak") is None else f"{r['of peak']:.0%}", r.get("note", "")]
             for r in rows]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"kernels on {device} ({name}), median of {repeats}")
    if device.type != "cuda":
        print("CPU: the PyTorch references are timed; the Triton kernels are unmeasured here "
              "(Triton's interpreter checks them, it does not time them)")
    print(f"peak measured here: {hw.mem_bandwidth_gbs:.1f} GB/s copy bandwidth (over 100%: the "
          "data fit in cache); matmul "
          + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in hw.tflops.items()))
    print(format_table(table, ["kernel", "size", "dtype", "impl", "ms", "GB/s", "TFLOP/s",
                               "of peak", "note"]))
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}")
    return result
