"""Lab 04's figures, widgets and demo drivers: teaching a small model with a big one.

* Soft targets (Hinton et al. 2015): ``p_i = softmax(z / T)_i``. At T = 1 the teacher's
  next-token distribution is peaked; a higher T shows the "dark knowledge" in the tail,
  which tokens the teacher finds *almost* right. :class:`TemperatureExplorer` redraws the
  distribution as a slider moves T.
* Why T^2: the gradient of ``KL(p_t^T || p_s^T)`` with respect to a student logit is
  ``(p_s^T - p_t^T) / T``, and for large T the difference itself shrinks as 1/T, so the
  gradient falls as 1/T^2. :func:`grad_norm_vs_temperature` measures it.
* Forward vs reverse KL (Gu et al. 2023, MiniLLM): fitting a one-mode q to a two-mode p,
  ``KL(p || q)`` covers both modes (mean-seeking), ``KL(q || p)`` picks one (mode-seeking).
  :func:`fit_gaussian` shows both on a toy distribution.
* :class:`LiveCurves` draws training curves while ``distill()`` runs, through its callback.

The lab's sizes are ``scale.distillation`` (:mod:`infer_lab.scale`); lab 03's
prune-then-distill reads them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch

from ..scale import SCALES, DistillationSizes, current_scale
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


SIZES = {name: sc.distillation for name, sc in SCALES.items()}  # written in scale.py


def lab_sizes(scale_name: str | None = None) -> DistillationSizes:
    """The sizes for ``scale_name`` (default: the current INFER_LAB_SCALE)."""
    return current_scale(scale_name).distillation


def valid_loss(model, valid_ids: np.ndarray, sizes: DistillationSizes) -> float:
    """Held-out loss (nats/token) measured exactly as ``distill()`` measures its runs."""
    from ..zoo.loop import evaluate

    loss = evaluate(model, valid_ids, sizes.seq_len, sizes.eval_tokens)
    model.eval()  # evaluate() leaves the model in train mode
    return loss


def token_streams(tok, train_chars: int, valid_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) token streams, files joined by EOS as the zoo was trained.

    Train files are taken evenly across the split (every k-th file) up to ``train_chars``,
    so a short run still sees many modules; valid is the held-out split's first files.
    """
    from ..zoo import data

    def stream(files, budget: int) -> np.ndarray:
        texts, n = [], 0
        for f in files:
            if n >= budget:
                break
            texts.append(f.text[: budget - n])
            n += len(texts[-1])
        ids: list[int] = []
        for enc in tok.encode_batch(texts):
            ids.extend(enc)
            ids.append(tok.eos_id)
        return np.asarray(ids, dtype=np.int64)

    train = data.iter_files("train")
    mean_chars = sum(len(f.text) for f in train) / len(train)
    step = max(1, int(len(train) * mean_chars / train_chars))
    return stream(train[::step], train_chars), stream(data.iter_files("valid"), valid_chars)


# -- soft targets ---------------------------------------------------------------------------
@torch.inference_mode()
def next_token_logits(model, ids: Sequence[int]) -> torch.Tensor:
    """The model's logits (V,) for the token after ``ids``."""
    x = torch.tensor([list(ids)], device=model.device)
    return model(x, last_only=True)[0, -1].float().cpu()


def entropy_bits(probs: torch.Tensor) -> float:
    """Shannon entropy of a distribution, in bits: how spread out it is."""
    p = probs.clamp_min(1e-30)
    return float(-(p * p.log2()).sum())


def soft_targets_figure(logits: torch.Tensor, labels: Sequence[str],
                        temperatures: Sequence[float], top_k: int = 12) -> go.Figure:
    """Grouped bars: probability of the teacher's top-k tokens at each temperature.

    ``labels`` names every vocabulary entry (e.g. the decoded token). The tokens are the
    top-k at T = 1, so the bars show the same tokens gaining or losing mass.
    """
    top = logits.topk(top_k).indices.tolist()
    names = [repr(labels[i]) for i in top]
    fig = go.Figure()
    for k, T in enumerate(temperatures):
        p = torch.softmax(logits / T, -1)
        fig.add_trace(go.Bar(x=names, y=[float(p[i]) for i in top],
                             name=f"T = {T:g} ({entropy_bits(p):.2f} bits)",
                             marker_color=COLORS[k % len(COLORS)]))
    layout(fig, "Teacher's next-token distribution, softened", "token (top at T = 1)",
           "probability (unitless)", barmode="group")
    return fig


class TemperatureExplorer(Explorer):
    """Slide the temperature: the teacher's distribution over its top tokens, redrawn,
    beside T = 1 for reference."""

    def __init__(self, logits: torch.Tensor, labels: Sequence[str], top_k: int = 12,
                 temperature: float = 2.0):
        self.logits, self.labels, self.top_k = logits, labels, top_k
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=-0.5, max=1.3,
                                            step=0.05, description="T",
                                            readout_format=".3g", continuous_update=False)
        self.controls = W.HBox([self.temperature])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.temperature)
        self.update()

    def update(self) -> None:
        T = self.temperature.value
        swap_figure(self.figure,
                    soft_targets_figure(self.logits, self.labels, (1.0, T), self.top_k))
        p = torch.softmax(self.logits / T, -1)
        k = self.top_k
        self.readout.value = (f"T = <b>{T:.3g}</b>: top token {float(p.max()):.1%}, "
                              f"mass outside the top {k}: {1 - float(p.topk(k).values.sum()):.1%}, "
                              f"entropy {entropy_bits(p):.2f} bits "
                              f"(uniform over {p.numel()} tokens: {math.log2(p.numel()):.1f})")


# -- why T^2 -------------------------------------------------------------------------------
def grad_norm_vs_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperatures: Sequence[float],
                             kd_loss: Callable) -> dict[str, list[float]]:
    """Norm of d(loss)/d(student logits) at each T, for ``kd_loss`` (which includes T^2)
    and for the same loss divided by T^2."""
    out: dict[str, list[float]] = {"with T²": [], "without T²": []}
    for T in temperatures:
        z = student_logits.detach().clone().requires_grad_(True)
        loss = kd_loss(z, teacher_logits.detach(), T)
        (g,) = torch.autograd.grad(loss, z)
        out["with T²"].append(float(g.norm()))
        out["without T²"].append(float(g.norm()) / T ** 2)
    return out


def grad_norm_figure(temperatures: Sequence[float], norms: dict[str, list[float]]) -> go.Figure:
    fig = go.Figure()
    for k, (label, ys) in enumerate(norms.items()):
        fig.add_trace(go.Scatter(x=list(temperatures), y=ys, mode="lines+markers", name=label,
                                 line={"color": COLORS[k]}))
    layout(fig, "Size of the distillation gradient against temperature", "temperature T (log)",
           "‖∂loss/∂student logits‖ (log)")
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


# -- forward vs reverse KL -------------------------------------------------------------------
def bimodal(x: torch.Tensor, modes: tuple[float, float] = (-2.0, 2.5),
            widths: tuple[float, float] = (0.6, 0.8), weights: tuple[float, float] = (0.45, 0.55)
            ) -> torch.Tensor:
    """A two-mode "teacher" distribution on the grid ``x`` (normalised over the grid)."""
    p = sum(w * torch.exp(-0.5 * ((x - m) / s) ** 2) / s
            for m, s, w in zip(modes, widths, weights))
    return p / p.sum()


def gaussian(x: torch.Tensor, mu: torch.Tensor | float, sigma: torch.Tensor | float
             ) -> torch.Tensor:
    """Gaussians on the grid ``x`` (last axis), normalised over the grid; mu and sigma may
    be tensors of candidates (shape (...,1)) to evaluate many at once."""
    return torch.softmax(-0.5 * ((x - mu) / sigma) ** 2, -1)


def fit_gaussian(p: torch.Tensor, x: torch.Tensor, direction: str,
                 n_mu: int = 241, n_sigma: int = 80) -> torch.Tensor:
    """The one-mode "student" q (a Gaussian on the grid) that minimises KL in ``direction``.

    "forward": KL(p || q) = sum p log(p / q), what distillation with soft targets
    minimises; "reverse": KL(q || p) = sum q log(q / p), MiniLLM's objective. An exhaustive
    search over (mu, sigma), not gradient descent: reverse KL has a poor local minimum
    between the modes, and the point here is the global one.
    """
    mus = torch.linspace(float(x.min()), float(x.max()), n_mu)
    sigmas = torch.logspace(-1.3, 0.8, n_sigma)
    mu, sigma = (t.reshape(-1, 1) for t in torch.meshgrid(mus, sigmas, indexing="ij"))
    q = gaussian(x, mu, sigma)  # (n_mu * n_sigma, grid)
    lp, lq = p.clamp_min(1e-12).log(), q.clamp_min(1e-12).log()
    if direction == "forward":
        loss = (p * (lp - lq)).sum(-1)
    elif direction == "reverse":
        loss = (q * (lq - lp)).sum(-1)
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return q[loss.argmin()]


def kl_fit_figure(x: torch.Tensor, p: torch.Tensor, fits: dict[str, torch.Tensor]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=x.tolist(), y=p.tolist(), name="teacher p (two modes)",
                               fill="tozeroy", line={"color": "grey"}))
    for k, (label, q) in enumerate(fits.items()):
        fig.add_trace(go.Scatter(x=x.tolist(), y=q.tolist(), name=label,
                                 line={"color": COLORS[k + 1], "width": 3}))
    return layout(fig, "A one-mode student fitted to a two-mode teacher", "x (toy outcome)",
                  "probability (unitless)")


def kl_both(p: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    """(KL(p || q), KL(q || p)) in nats."""
    lp, lq = p.clamp_min(1e-12).log(), q.clamp_min(1e-12).log()
    return float((p * (lp - lq)).sum()), float((q * (lq - lp)).sum())


# -- live training curves ----------------------------------------------------------------------
class LiveCurves:
    """A FigureWidget of validation loss against step, one line per run, updated in place
    from ``distill()``'s ``callback(step, record)``.

        curves = LiveCurves(); curves          # display it first
        distill(..., callback=curves.callback("KD"))
    """

    def __init__(self, title: str = "Validation loss while training (live)",
                 key: str = "valid_loss", ytitle: str = "validation loss (nats/token)"):
        self.key = key
        self.runs: dict[str, list[tuple[int, float]]] = {}
        self.figure = go.FigureWidget(layout(go.Figure(), title, "training step", ytitle))

    def callback(self, label: str, start: float | None = None) -> Callable[[int, dict], None]:
        """A ``callback(step, record)`` that adds record[key] to the line ``label``;
        ``start``, when given, is the value at step 0 (before training)."""
        k = len(self.figure.data)
        self.runs[label] = []
        self.figure.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=label,
                                         line={"color": COLORS[k % len(COLORS)]}))
        trace = self.figure.data[k]

        def record(step: int, rec) -> None:
            value = rec[self.key] if isinstance(rec, dict) else getattr(rec, self.key)
            self.runs[label].append((step, float(value)))
            xs, ys = zip(*self.runs[label])
            with self.figure.batch_update():
                trace.x, trace.y = list(xs), list(ys)

        if start is not None:
            record(0, {self.key: start})
        return record

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.figure)


def final_bars_figure(values: dict[str, float], title: str, ytitle: str,
                      reference: dict[str, float] | None = None) -> go.Figure:
    """One bar per run, with dashed horizontal lines for reference models (e.g. teacher)."""
    fig = go.Figure(go.Bar(x=list(values), y=list(values.values()),
                           text=[f"{v:.3g}" for v in values.values()], textposition="outside",
                           marker_color=COLORS[: len(values)]))
    for label, v in (reference or {}).items():
        fig.add_hline(y=v, line={"dash": "dash", "color": "grey"}, annotation_text=label)
    return layout(fig, title, "", ytitle, showlegend=False)
