"""Lab 00's decode-loop race: the learner's greedy loop against the package's.

A decode loop is ``prefill`` once, then one ``decode_one_token`` per new token
(:mod:`infer_lab.generate`). The learner writes that loop in the lab
(:mod:`infer_lab.exercises.welcome_decode`); :func:`race_loops` then generates with it on
the lab's model, checks its tokens against :func:`infer_lab.generate`'s greedy ones and
times both, so the learner sees their own loop decode at the package's speed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import plotly.graph_objects as go
import torch

from ..generate import generate
from ..kv_cache import KVCache
from ..metrics import time_call
from .figures import COLORS, layout

DecodeLoop = Callable[..., list[int]]  # (model, cache, prompt, max_new_tokens) -> tokens


def run_loop(loop: DecodeLoop, model: torch.nn.Module, prompt: list[int],
             max_new_tokens: int) -> list[int]:
    """Greedy tokens from ``loop`` with a fresh KV cache sized for the request."""
    cache = KVCache.for_model(model, 1, len(prompt) + max_new_tokens)
    with torch.inference_mode():
        return [int(t) for t in loop(model, cache, list(prompt), max_new_tokens)]


def race_loops(model: torch.nn.Module, prompt: list[int], max_new_tokens: int,
               loop: DecodeLoop, repeats: int = 3) -> dict[str, float]:
    """Tokens/s of ``loop`` and of the package's ``generate`` (median of ``repeats``
    timed runs each, one warm-up); prints whether their tokens agree."""
    mine = run_loop(loop, model, prompt, max_new_tokens)
    ref = generate(model, [prompt], max_new_tokens)[0]
    same = sum(a == b for a, b in zip(mine, ref))
    print(f"{same}/{len(ref)} tokens identical to infer_lab.generate's greedy tokens")
    times = {
        "this lab's loop": time_call(lambda: run_loop(loop, model, prompt, max_new_tokens),
                                     device=model.device, warmup=1, repeats=repeats),
        "infer_lab.generate": time_call(lambda: generate(model, [prompt], max_new_tokens),
                                        device=model.device, warmup=1, repeats=repeats)}
    tps = {k: max_new_tokens / statistics.median(v) for k, v in times.items()}
    for k, v in tps.items():
        print(f"{k:>20}: {v:8.1f} tokens/s ({max_new_tokens} tokens, prefill included)")
    return tps


def race_figure(tps: dict[str, float], title: str) -> go.Figure:
    """One bar per loop: generated tokens/s (prefill included)."""
    fig = go.Figure(go.Bar(x=list(tps), y=list(tps.values()),
                           text=[f"{v:.0f}" for v in tps.values()], textposition="outside",
                           marker_color=COLORS[: len(tps)]))
    return layout(fig, title, "decode loop", "throughput (tokens/s)", showlegend=False)
