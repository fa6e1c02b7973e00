"""A replica's cold start, measured: what a new replica pays before it serves.

A new replica must start Python, import torch, load the weights and run once (the first
forward allocates, picks kernels, fills caches) before its first request. The
autoscaler (:mod:`infer_lab.app.autoscale`) needs that number: the longer it is, the
more headroom a fleet must keep to ride out a burst while new replicas start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

__all__ = ["measure_cold_start"]

_COLD_START = """
import json, sys, time
t0 = time.perf_counter()
import torch, infer_lab
t1 = time.perf_counter()
model, tok = infer_lab.load(sys.argv[1])
t2 = time.perf_counter()
infer_lab.complete(model, tok, "def read_config(path):\\n", int(sys.argv[2]))
if torch.cuda.is_available():
    torch.cuda.synchronize()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "warmup_s": t3 - t2,
                  "device": str(next(model.parameters()).device)}))
"""


def measure_cold_start(model: str = "code-m", warmup_tokens: int = 8,
                       timeout_s: float = 600.0) -> dict:
    """A replica's cold start, measured: a fresh Python process that imports torch and
    infer_lab, runs ``infer_lab.load(model)`` and one warm-up generate. Returns the parts
    (s), ``interpreter_s`` (start-up and exit) and ``cold_start_s``, the wall time of it
    all. Each call measures anew (a new process: no warm import or weight cache of
    ours; the OS page cache may still hold the files). A cloud adds to this the time to
    get a machine and pull the image, often minutes."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _COLD_START, model, str(warmup_tokens)],
                         check=False, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"cold start of {model!r} failed:\n{run.stderr[-2000:]}")
    parts = json.loads(run.stdout.splitlines()[-1])
    parts["interpreter_s"] = wall - parts["import_s"] - parts["load_s"] - parts["warmup_s"]
    parts["cold_start_s"] = wall
    return parts
