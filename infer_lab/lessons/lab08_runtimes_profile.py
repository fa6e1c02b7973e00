"""Lab 08's profile of one decode step: where the time goes, by op kind, as a picture.

:func:`step_profiles` profiles the same decode steps of fp32 and of the fused int8 / int4
models (:func:`infer_lab.runtimes.profile.profile_decode`), grouping ops with the
classifier it is given: the learner's ``op_kind`` once it passes, the package's until then.
:func:`profile_figure` stacks each model's milliseconds per step by kind, with the
unprofiled wall time beside it (the profiler's own cost per op makes the profiled total the
larger: compare shares, not sums); :func:`kind_table` and :func:`matmul_line` print them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import plotly.graph_objects as go
import torch

from ..runtimes.profile import KINDS, DecodeProfile, op_kind, profile_decode
from .figures import COLORS, layout

SCHEMES = {"fp32": None, "fused int8": "int8-packed+head", "fused int4": "int4-g64-packed+head"}
KIND_COLORS = dict(zip(KINDS, COLORS))


def quantized_models(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """fp32 itself and its fused int8 / int4 copies (sharing fp32's other tensors)."""
    from ..quant import quantize_model
    from ..surgery import shared_copy

    out = {}
    for name, scheme in SCHEMES.items():
        if scheme is None:
            out[name] = model
            continue
        with warnings.catch_warnings():  # a layer kept unfused says so in the bench; here
            warnings.simplefilter("ignore")  # the profile shows it as an fp32 mm anyway
            out[name] = quantize_model(shared_copy(model), scheme).eval()
    return out


def step_profiles(models: dict[str, torch.nn.Module], prompt: list[int], steps: int,
                  classify: Callable[[str], str] = op_kind) -> dict[str, DecodeProfile]:
    """One :class:`DecodeProfile` per model, ops grouped by ``classify``."""
    return {name: profile_decode(m, prompt, steps=steps, classify=classify, label=name)
            for name, m in models.items()}


def profile_figure(profiles: dict[str, DecodeProfile]) -> go.Figure:
    """Milliseconds per decode step by op kind (stacked), one bar per model, and the
    step's unprofiled wall time as a marker."""
    names = list(profiles)
    kinds = list(dict.fromkeys(k for p in profiles.values() for k in p.by_kind))
    fig = go.Figure()
    for i, kind in enumerate(kinds):
        ys = [profiles[n].by_kind.get(kind, 0.0) for n in names]
        if not any(ys):
            continue
        top = [", ".join(f"{o.name.removeprefix('aten::')} {o.ms_per_step:.3f}"
                         for o in profiles[n].top(kind, 3)) for n in names]
        fig.add_trace(go.Bar(y=names, x=ys, name=kind, orientation="h",
                             marker_color=KIND_COLORS.get(kind, COLORS[i % len(COLORS)]),
                             customdata=top,
                             hovertemplate=f"{kind}: %{{x:.3f}} ms/step<br>%{{customdata}}"
                                           "<extra></extra>"))
    fig.add_trace(go.Scatter(y=names, x=[profiles[n].wall_ms for n in names], mode="markers",
                             name="wall time, unprofiled", marker={"symbol": "line-ns-open",
                                                                   "size": 24, "color": "black"}))
    layout(fig, "One decode step by op kind (self CPU time, torch.profiler)",
           "time per decode step (ms)", "", barmode="stack", height=360)
    return fig


def kind_table(profiles: dict[str, DecodeProfile]) -> str:
    """ms per step and share of each kind, one column per model."""
    from ..bench import format_table

    names = list(profiles)
    kinds = [k for k in dict.fromkeys(k for p in profiles.values() for k in p.by_kind)
             if any(profiles[n].by_kind.get(k) for n in names)]
    rows = [[k, *(f"{profiles[n].by_kind.get(k, 0):.3f} ({profiles[n].share(k):.0%})"
                  for n in names)] for k in kinds]
    rows.append(["all ops, profiled", *(f"{profiles[n].total_ms:.3f}" for n in names)])
    rows.append(["wall time, unprofiled", *(f"{profiles[n].wall_ms:.3f}" for n in names)])
    return format_table(rows, ["ms per step (share)", *names])


def matmul_line(p: DecodeProfile) -> str:
    """Which op the matmul time of a profile comes from."""
    ops = p.top("matmul", 3)
    if not ops:
        return f"{p.label}: no matmul op in this profile"
    parts = ", ".join(f"{o.name} {o.ms_per_step:.3f} ms ({o.calls_per_step:.0f} calls)"
                      for o in ops)
    return f"{p.label}: matmul {p.by_kind['matmul']:.3f} ms/step = {parts}"
