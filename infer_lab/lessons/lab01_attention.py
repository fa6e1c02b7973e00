"""Lab 01: decoding code-m through the learner's ``decode_attention``, and the window slider.

The model attends through its cache (:mod:`infer_lab.kv_cache`: ``begin`` once per
forward, ``attend`` per layer), so plugging in another attention is one more cache:
:class:`PluggedAttentionCache` stores K/V exactly as :class:`~infer_lab.kv_cache.KVCache`
does (contiguous, or a ring buffer of W slots for a sliding window) and, on each decode
step, hands every sequence's query, new key/value and visible cached keys/values to the
function it was given. The prefill keeps the package's attention: the exercise is the
decode step.

:class:`WindowExplorer` is the sliding-window trade-off: a window of W slots caps the
cache at W tokens (bytes = W x KV bytes per token), and the price is the tokens on which
the windowed model stops agreeing with full attention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ipywidgets as W
import plotly.graph_objects as go
import torch

from ..generate import collect, decode_steps
from ..kv_cache import KVCache, KVStep
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure

# (q (H, D), k_new (H_kv, D), v_new (H_kv, D), k_cache (H_kv, S, D), v_cache) -> (H, D)
DecodeAttention = Callable[..., torch.Tensor]


class PluggedAttentionCache(KVCache):
    """A KV cache whose decode steps (one new token per row) attend through ``attention``."""

    def __init__(self, *args, attention: DecodeAttention, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention = attention

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int = 1, max_len: int | None = None,
                  window: int | None = None, *, attention: DecodeAttention
                  ) -> PluggedAttentionCache:
        cfg, p = model.config, next(model.parameters())
        return cls(cfg.n_layer, batch, cfg.n_kv_head, cfg.head_dim, max_len or cfg.max_seq_len,
                   window=window, dtype=p.dtype, device=p.device, attention=attention)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: KVStep) -> torch.Tensor:
        if q.shape[2] != 1:  # a prefill: the package's attention
            return super().attend(layer, q, k, v, step)
        k_all, v_all = self.update(layer, k, v, step)  # (B, H_kv, S, D), the new token last
        B, S = k_all.shape[0], k_all.shape[2]
        # Which stored keys each row's query may see: its mask row (padding, a ring's stale
        # or empty slots), or every key when the plain causal rule holds.
        seen = (step.mask[:, 0, 0, :] if step.mask is not None
                else torch.ones(B, S, dtype=torch.bool, device=k_all.device))  # (B, S)
        rows = []
        for b in range(B):  # the exercise's function attends for one sequence
            kb, vb = k_all[b][:, seen[b]], v_all[b][:, seen[b]]  # (H_kv, S_b, D)
            rows.append(self.attention(q[b, :, 0], kb[:, -1], vb[:, -1], kb[:, :-1],
                                       vb[:, :-1]))  # (H, D)
        return torch.stack(rows)[:, :, None]  # (B, H, 1, D)


def generate_through(model: torch.nn.Module, prompt: list[int], max_new_tokens: int,
                     attention: DecodeAttention, window: int | None = None) -> list[int]:
    """Greedy tokens of ``model`` whose decode steps attend through ``attention``."""
    cache = PluggedAttentionCache.for_model(
        model, 1, None if window else len(prompt) + max_new_tokens, window,
        attention=attention)
    return collect(decode_steps(model, [prompt], max_new_tokens, cache=cache), 1,
                   max_new_tokens)[0]


def agreeing_tokens(a: list[int], b: list[int]) -> int:
    """New tokens that agree before the two continuations first part ways."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def window_tradeoff_figure(points: Mapping[int, tuple[float, int]], full: tuple[float, int],
                           current: int | None = None,
                           title: str = "Sliding window: memory against agreement"
                           ) -> go.Figure:
    """Agreeing tokens against the KV bytes each window holds (KB), full attention beside.

    points: {window: (KV bytes, agreeing tokens)}; full: (KV bytes, tokens generated).
    """
    ws = sorted(points)
    fig = go.Figure([
        go.Scatter(x=[points[w][0] / 1e3 for w in ws], y=[points[w][1] for w in ws],
                   mode="lines+markers+text", name="sliding window",
                   text=[f"W={w}" for w in ws], textposition="top center",
                   line={"color": COLORS[0]}),
        go.Scatter(x=[full[0] / 1e3], y=[full[1]], mode="markers+text", name="full attention",
                   text=["full"], textposition="bottom center",
                   marker={"size": 12, "symbol": "diamond", "color": COLORS[1]}),
    ])
    if current in points:
        fig.add_trace(go.Scatter(x=[points[current][0] / 1e3], y=[points[current][1]],
                                 mode="markers", name=f"window {current}",
                                 marker={"size": 16, "color": "black", "symbol": "circle-open",
                                         "line": {"width": 3}}))
    return layout(fig, title, "KV cache held (KB)", "new tokens agreeing with full attention")


class WindowExplorer(Explorer):
    """A window-size slider: decode ``context`` with that window (through ``attention``),
    count the new tokens that agree with full attention, and re-plot every window tried
    so far against the bytes its ring buffer holds."""

    def __init__(self, model: torch.nn.Module, context: list[int], max_new_tokens: int,
                 attention: DecodeAttention, windows: list[int], window: int,
                 full_tokens: list[int] | None = None,
                 known: Mapping[int, list[int]] | None = None):
        self.model, self.context, self.n = model, context, max_new_tokens
        self.attention = attention
        self.per_token = model.config.kv_bytes_per_token(model.dtype.itemsize)
        self.full = full_tokens or generate_through(model, context, max_new_tokens, attention)
        self.outputs: dict[int, list[int]] = dict(known or {})
        self.slider = W.SelectionSlider(options=sorted(windows), value=window,
                                        description="window")
        self.controls = W.HBox([self.slider])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.slider)
        self.update()

    def bytes_held(self, window: int) -> float:
        """KV bytes the ring holds at the end: W slots, or fewer if the text is shorter."""
        return self.per_token * min(window, len(self.context) + self.n)

    def points(self) -> dict[int, tuple[float, int]]:
        return {w: (self.bytes_held(w), agreeing_tokens(out, self.full))
                for w, out in self.outputs.items()}

    def update(self) -> None:
        w = self.slider.value
        if w not in self.outputs:
            self.readout.value = f"decoding with a window of {w} tokens..."
            self.outputs[w] = generate_through(self.model, self.context, self.n,
                                               self.attention, window=w)
        full = (self.per_token * (len(self.context) + self.n), self.n)
        swap_figure(self.figure, window_tradeoff_figure(self.points(), full, current=w))
        agree = agreeing_tokens(self.outputs[w], self.full)
        self.readout.value = (f"window <b>{w}</b> tokens: the cache holds "
                              f"<b>{self.bytes_held(w) / 1e3:.4g} KB</b> (full attention "
                              f"{full[0] / 1e3:.4g} KB); <b>{agree}</b> of {self.n} new tokens "
                              f"agree with full attention over a {len(self.context)}-token "
                              "context")
