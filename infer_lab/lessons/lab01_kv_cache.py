"""Lab 01's figures and calculators: the KV cache, what it saves and what it costs.

* Without a cache, token t re-runs attention over all t previous tokens, so a sequence
  of n tokens costs O(n^2); with it, each step computes one new K, V pair and reads the
  rest (:class:`CacheTimingExplorer`, timed by :func:`infer_lab.timing.time_decode`).
* Its memory bill: 2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes
  per element (:func:`kv_bytes`, :class:`KVCalculator`); grouped-query attention
  (Ainslie et al. 2023) divides it by heads / KV heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ipywidgets as W
import plotly.graph_objects as go

from ..config import PRESETS, ModelConfig
from ..timing import time_decode
from .figures import COLORS, GB, kv_growth_figure, layout
from .widgets import Explorer, device_memory_options, swap_figure

BYTES_PER_ELEM = {"fp32": 4.0, "fp16/bf16": 2.0, "fp8/int8": 1.0, "int4": 0.5}


def token_latency_figure(series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                         title: str = "Time per generated token") -> go.Figure:
    """Per-token time (ms) against the token's position in the sequence.

    series: {label: (positions, seconds per token)}.
    """
    fig = go.Figure()
    for k, (label, (pos, secs)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(pos), y=[s * 1e3 for s in secs], mode="lines+markers",
                                 name=label, marker={"size": 4},
                                 line={"color": COLORS[k % len(COLORS)]}))
    return layout(fig, title, "position of the token in the sequence (tokens)",
                  "time for this token (ms)")


def throughput_figure(lengths: Sequence[int], series: Mapping[str, Sequence[float]],
                      title: str = "Prefill vs decode throughput") -> go.Figure:
    """Tokens/s against sequence length, one line per phase."""
    fig = go.Figure()
    for k, (label, tps) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(lengths), y=list(tps), mode="lines+markers",
                                 name=label, line={"color": COLORS[k % len(COLORS)]}))
    layout(fig, title, "tokens processed (tokens)", "throughput (tokens/s, log)")
    fig.update_yaxes(type="log")
    return fig


# -- KV cache --------------------------------------------------------------------------------
def kv_bytes(n_layer: int, n_kv_head: int, head_dim: int, context: int, batch: int,
             bytes_per_elem: float) -> float:
    """2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes per element."""
    return 2 * n_layer * n_kv_head * head_dim * context * batch * bytes_per_elem


class KVCalculator(Explorer):
    """KV-cache size of a model shape: layers, heads, KV heads, head dim, dtype, context,
    batch. Picking a preset fills the shape; the figure shows GQA against MHA."""

    CONTEXTS = tuple(2**k for k in range(7, 18))  # 128 .. 131072 tokens

    def __init__(self, preset: str = "llama-3-8b", context: int = 8192, batch: int = 1,
                 dtype: str = "fp16/bf16", device: str | None = None):
        self.devices = device_memory_options()
        box = {"layout": W.Layout(width="190px"), "style": {"description_width": "85px"}}
        self.preset = W.Dropdown(options=list(PRESETS), value=preset, description="model")
        self.n_layer = W.BoundedIntText(min=1, max=1024, description="layers", **box)
        self.n_head = W.BoundedIntText(min=1, max=1024, description="heads", **box)
        self.n_kv_head = W.BoundedIntText(min=1, max=1024, description="KV heads", **box)
        self.head_dim = W.BoundedIntText(min=1, max=4096, description="head dim", **box)
        self.dtype = W.Dropdown(options=list(BYTES_PER_ELEM), value=dtype,
                                description="KV dtype")
        self.context = W.SelectionSlider(options=list(self.CONTEXTS), value=context,
                                         description="context")
        self.batch = W.SelectionSlider(options=[2**k for k in range(9)], value=batch,
                                       description="batch")
        self.device = W.Dropdown(options=list(self.devices),
                                 value=device or next(iter(self.devices)),
                                 description="device")
        self.controls = W.VBox([
            W.HBox([self.preset, self.dtype, self.device]),
            W.HBox([self.n_layer, self.n_head, self.n_kv_head, self.head_dim]),
            W.HBox([self.context, self.batch])])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.preset.observe(lambda _c: self.fill(), names="value")
        self._filling = False
        self.wire(self.n_layer, self.n_head, self.n_kv_head, self.head_dim, self.dtype,
                   self.context, self.batch, self.device)
        self.fill()

    def fill(self) -> None:
        """Copy the selected preset's shape into the fields."""
        cfg: ModelConfig = PRESETS[self.preset.value]
        self._filling = True
        try:
            self.n_layer.value, self.n_head.value = cfg.n_layer, cfg.n_head
            self.n_kv_head.value, self.head_dim.value = cfg.n_kv_head, cfg.head_dim
        finally:
            self._filling = False
        self.update()

    def bytes(self, context: int | None = None, n_kv_head: int | None = None) -> float:
        return kv_bytes(self.n_layer.value, n_kv_head or self.n_kv_head.value,
                        self.head_dim.value, context or self.context.value, self.batch.value,
                        BYTES_PER_ELEM[self.dtype.value])

    def update(self) -> None:
        if self._filling:
            return
        ctx, H, Hkv = self.context.value, self.n_head.value, self.n_kv_head.value
        xs = [c for c in self.CONTEXTS if c <= max(ctx * 4, 4096)]
        curves = {f"this shape ({Hkv} KV heads)": (xs, [self.bytes(c) for c in xs])}
        if Hkv != H:
            curves[f"same shape with MHA ({H} KV heads)"] = (xs, [self.bytes(c, H) for c in xs])
        limit = {self.device.value: self.devices[self.device.value]}
        swap_figure(self.figure, kv_growth_figure(curves, limit, marker=(ctx, self.bytes()),
                                                      title=f"KV cache, batch {self.batch.value}, "
                                                            f"{self.dtype.value}"))
        per_tok = self.bytes(1) / self.batch.value
        text = (f"per token: <b>{per_tok / 1e3:.4g} KB</b> &nbsp; total at {ctx:,} tokens x "
                f"batch {self.batch.value}: <b>{self.bytes() / GB:.4g} GB</b>")
        if Hkv != H:
            text += (f" &nbsp; (MHA would need {self.bytes(n_kv_head=H) / GB:.4g} GB: GQA "
                     f"saves {H / Hkv:g}x)")
        if H % Hkv:
            text += "<br><b>warning:</b> heads must be a multiple of KV heads"
        self.readout.value = text


def kv_calculator(**kw) -> KVCalculator:
    return KVCalculator(**kw)


# -- timing -----------------------------------------------------------------------------------
class CacheTimingExplorer(Explorer):
    """Pick how many tokens to generate, press measure: time per token with and without
    the KV cache, against position."""

    def __init__(self, model, prompt: list[int], n_tokens: int, max_tokens: int,
                 series: dict | None = None):
        self.model, self.prompt = model, prompt
        self.length = W.IntSlider(value=n_tokens, min=8, max=max_tokens, step=8,
                                  description="tokens")
        self.button = W.Button(description="measure", button_style="primary",
                               icon="play")
        self.controls = W.HBox([self.length, self.button])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.button.on_click(lambda _b: self.measure())
        if series is not None:
            self.show(series)
        else:
            self.measure()

    def measure(self) -> dict:
        self.readout.value = "measuring..."
        series = {label: time_decode(self.model, self.prompt, self.length.value, use_cache=c)
                  for label, c in (("no cache", False), ("with cache", True))}
        self.show(series)
        return series

    def show(self, series: dict) -> None:
        self.series = series  # {label: (positions, seconds)} of the last measurement
        swap_figure(self.figure, token_latency_figure(series))
        parts = []
        for label, (_pos, secs) in series.items():
            parts.append(f"{label}: first {secs[0] * 1e3:.3g} ms, last {secs[-1] * 1e3:.3g} ms, "
                         f"total {sum(secs):.3g} s")
        self.readout.value = "<br>".join(parts)

    def update(self) -> None:  # the slider alone does not re-measure: that takes time
        pass
