"""Lab 04's inference payoff, and the learner's training step at work.

* :func:`train_with_step` trains a student with a given one-step function (the learner's
  ``distill_step`` once it passes): the zoo's batches, AdamW and learning-rate schedule,
  the step itself handed in, so the curve it draws is the learner's code training.
* Why distil at all: a smaller student decodes faster. :func:`measure_payoff` times the
  teacher and each student (decode tokens/s at batch 1, the models alternating) and
  measures each student as a *draft* for the teacher (lab 05: speculative decoding,
  greedy): its per-token acceptance alpha. :class:`PayoffExplorer` puts held-out loss
  against tokens/s and, for the student chosen, the speedup Leviathan et al.'s formula
  predicts for k draft tokens, (1 - a^(k+1)) / ((1 - a)(k c + 1)), with c the student's
  cost per token relative to the teacher's, measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from torch import nn

from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


def train_with_step(student: nn.Module, teacher: nn.Module, step: Callable,
                    loss_fn: Callable, cfg, train_ids: np.ndarray, valid_ids: np.ndarray,
                    callback: Callable[[int, dict], None] | None = None) -> float:
    """Train ``student`` in place for ``cfg.steps`` calls of
    ``step(student, teacher, optimizer, x, cfg.temperature, loss_fn)``; the batches, AdamW
    and the learning-rate schedule are distill()'s (cfg: a DistillConfig). Evaluates every
    ``cfg.eval_every`` steps (``callback(step, {"valid_loss": ...})``); returns the last
    held-out loss."""
    from ..zoo.loop import adamw, evaluate, get_batch, lr_at

    torch.manual_seed(cfg.seed)
    opt = adamw(student.named_parameters(), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    teacher.eval()
    student.train()
    loss = float("nan")
    for i in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(i, cfg)
        x, _ = get_batch(train_ids, cfg.batch_size, cfg.seq_len, gen)  # (B, T); no labels
        step(student, teacher, opt, x, cfg.temperature, loss_fn)
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.steps:
            loss = evaluate(student, valid_ids, cfg.seq_len, cfg.eval_tokens, cfg.bf16)
            if callback is not None:
                callback(i + 1, {"valid_loss": loss})
    student.eval()
    return loss


def prompts_from(ids: np.ndarray, n: int, length: int = 32) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens, spread evenly through a held-out stream."""
    starts = np.linspace(0, max(0, len(ids) - length - 1), n).astype(int)
    return [ids[s:s + length].tolist() for s in starts]


def measure_payoff(teacher: nn.Module, students: Mapping[str, nn.Module],
                   prompts: Sequence[list[int]], n_new: int, decode_tokens: int,
                   repeats: int, k: int = 4) -> dict[str, dict[str, float]]:
    """{label: {"tokens_per_s", "alpha"}} for "teacher" and each student: decode tokens/s
    at batch 1, and (students) the per-token acceptance as a greedy draft for the teacher."""
    from tqdm.auto import tqdm

    from ..speculative import SpecStats, speculative_decode
    from ..timing import decode_tokens_per_s

    models = {"teacher": teacher, **students}
    tps = decode_tokens_per_s(models, list(prompts[0]), decode_tokens, repeats, batch=1,
                              progress=False)
    out = {"teacher": {"tokens_per_s": tps["teacher"], "alpha": 1.0}}
    for label, m in tqdm(students.items(), desc="drafts", leave=False):
        stats = SpecStats()
        for p in prompts:
            stats.add(speculative_decode(teacher, m, list(p), n_new, k=k)[1])
        out[label] = {"tokens_per_s": tps[label], "alpha": stats.alpha}
    return out


def payoff_figure(points: Mapping[str, tuple[float, float]], chosen: str | None = None,
                  title: str = "What distillation buys at inference") -> go.Figure:
    """Held-out loss against decode tokens/s, one marker per model, ``chosen`` ringed."""
    fig = go.Figure()
    for k, (label, (x, y)) in enumerate(points.items()):
        ring = {"line": {"width": 4, "color": "black"}} if label == chosen else {}
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[label], name=label,
                                 textposition="top center",
                                 marker={"size": 18 if label == chosen else 12,
                                         "color": COLORS[k % len(COLORS)], **ring}))
    return layout(fig, title, "decode throughput at batch 1 (tokens/s)",
                  "held-out loss (nats/token, lower is better)", showlegend=False)


class PayoffExplorer(Explorer):
    """Pick a student and a draft length k: where it sits (loss vs tokens/s) and what it
    would buy as the teacher's draft (lab 05's speedup formula on the measured alpha, c).

    payoff: :func:`measure_payoff`'s result; losses: {label: held-out loss}, same labels.
    """

    def __init__(self, payoff: Mapping[str, Mapping[str, float]],
                 losses: Mapping[str, float], k: int = 4):
        self.payoff, self.losses = payoff, losses
        students = [lb for lb in payoff if lb != "teacher"]
        self.student = W.Dropdown(options=students, value=students[0], description="draft")
        self.k = W.IntSlider(value=k, min=1, max=8, description="k", continuous_update=False)
        self.controls = W.HBox([self.student, self.k])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.student, self.k)
        self.update()

    def speedup(self, label: str, k: int) -> tuple[float, float, float]:
        """(alpha, c, Leviathan speedup) of ``label`` as the teacher's draft."""
        from ..speculative import theoretical_speedup

        a = self.payoff[label]["alpha"]
        c = self.payoff["teacher"]["tokens_per_s"] / self.payoff[label]["tokens_per_s"]
        return a, c, theoretical_speedup(a, k, c)

    def update(self) -> None:
        label, k = self.student.value, self.k.value
        points = {lb: (v["tokens_per_s"], self.losses[lb]) for lb, v in self.payoff.items()}
        swap_figure(self.figure, payoff_figure(points, label))
        a, c, s = self.speedup(label, k)
        tps = self.payoff[label]["tokens_per_s"] / self.payoff["teacher"]["tokens_per_s"]
        self.readout.value = (
            f"<b>{label}</b>: {tps:.2f}x the teacher's tokens/s, held-out loss "
            f"{self.losses[label]:.3f} (teacher {self.losses['teacher']:.3f}). As the "
            f"teacher's draft: alpha = <b>{a:.2f}</b> (measured), a draft token costs "
            f"c = {c:.2f} of a teacher step, k = {k}: expected speedup <b>{s:.2f}x</b>"
            f"{' (slower than the teacher alone)' if s < 1 else ''}")
