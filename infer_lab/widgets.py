"""Interactive controls for the labs: ipywidgets wired to the figures of :mod:`infer_lab.viz`.

Each calculator is a small class: ``.controls`` (the widgets), ``.figure`` (a
``go.FigureWidget``, redrawn in place), ``.readout`` (an HTML line of numbers) and
``.update()``, which recomputes everything from the controls' current values. A cell
that ends with a calculator displays it. Tests drive them by setting control values.

Calculators compute with formulas (from :mod:`infer_lab.config` and
:mod:`infer_lab.hardware`); the timing explorer measures, with the helpers at the end
of this file.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import ipywidgets as W
import plotly.graph_objects as go
import torch

from . import viz
from .config import PRESETS, ModelConfig

GB = 1e9
BYTES_PER_ELEM = {"fp32": 4.0, "fp16/bf16": 2.0, "fp8/int8": 1.0, "int4": 0.5}


def machine_memory_bytes() -> int | None:
    """This machine's memory: the GPU's when CUDA is present, else physical RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_options() -> dict[str, float]:
    """{label: bytes}: this machine's memory (measured), then spec-sheet presets."""
    from .hardware import PRESETS as HW

    out: dict[str, float] = {}
    mine = machine_memory_bytes()
    if mine:
        kind = "GPU" if torch.cuda.is_available() else "RAM"
        out[f"this machine ({kind})"] = float(mine)
    for name, hw in HW.items():
        if hw.memory_gb:
            out[f"{name} (spec)"] = hw.memory_gb * GB
    return out


def _swap(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Redraw a FigureWidget from a freshly built figure, in one update."""
    with fw.batch_update():
        fw.data = []
        fw.add_traces(fig.data)
        fw.layout = fig.layout


class _Calculator:
    controls: W.Widget
    figure: go.FigureWidget
    readout: W.HTML

    def _wire(self, *controls: W.Widget) -> None:
        for c in controls:
            c.observe(lambda _change: self.update(), names="value")

    @property
    def widget(self) -> W.Widget:
        return W.VBox([self.controls, self.readout, self.figure])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# -- weights -------------------------------------------------------------------------------
class ModelMemoryCalculator(_Calculator):
    """Weight memory of real model shapes at fp32 / fp16 / int8 / int4 against a device.

    bytes = n_params * bits / 8 (scales and zero points of quantized formats ignored).
    """

    def __init__(self, models: Sequence[str] = ("code-m", "gpt2", "llama-3.2-1b",
                                                "llama-2-7b", "llama-3-8b", "llama-3-70b"),
                 device: str | None = None):
        self.devices = device_memory_options()
        self.models = W.SelectMultiple(options=list(PRESETS), value=tuple(models), rows=6,
                                       description="models")
        self.dtypes = W.SelectMultiple(options=list(viz.DTYPE_BITS),
                                       value=tuple(viz.DTYPE_BITS), rows=4,
                                       description="precision")
        self.device = W.Dropdown(options=list(self.devices),
                                 value=device or next(iter(self.devices)),
                                 description="device")
        self.controls = W.HBox([self.models, self.dtypes, self.device])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self._wire(self.models, self.dtypes, self.device)
        self.update()

    def sizes(self) -> dict[str, dict[str, float]]:
        return {m: {dt: PRESETS[m].n_params * viz.DTYPE_BITS[dt] / 8 for dt in self.dtypes.value}
                for m in self.models.value}

    def update(self) -> None:
        sizes = self.sizes()
        limit = self.devices[self.device.value]
        _swap(self.figure, viz.memory_bars_figure(sizes, {self.device.value: limit}))
        rows = []
        for m, by in sizes.items():
            fits = [dt for dt, b in by.items() if b <= limit]
            rows.append(f"<b>{m}</b> ({PRESETS[m].n_params / 1e9:.3g} B params): fits at "
                        f"{', '.join(fits) if fits else 'no precision shown'}")
        self.readout.value = "<br>".join(rows) + (
            f"<br><i>weights only, against {self.device.value}: "
            f"{limit / GB:.3g} GB</i>")


def model_memory_calculator(**kw) -> ModelMemoryCalculator:
    return ModelMemoryCalculator(**kw)


# -- KV cache --------------------------------------------------------------------------------
def kv_bytes(n_layer: int, n_kv_head: int, head_dim: int, context: int, batch: int,
             bytes_per_elem: float) -> float:
    """2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes per element."""
    return 2 * n_layer * n_kv_head * head_dim * context * batch * bytes_per_elem


class KVCalculator(_Calculator):
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
        self._wire(self.n_layer, self.n_head, self.n_kv_head, self.head_dim, self.dtype,
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
        _swap(self.figure, viz.kv_growth_figure(curves, limit, marker=(ctx, self.bytes()),
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


# -- cost --------------------------------------------------------------------------------------
class CostCalculator(_Calculator):
    """$ per 1M output tokens from a rental price ($/GPU-hour) and a throughput (tokens/s)."""

    def __init__(self, tokens_per_s: float, dollars_per_hour: float = 2.0):
        self.price = W.BoundedFloatText(value=dollars_per_hour, min=0, max=1000, step=0.1,
                                        description="$ / hour")
        self.tps = W.FloatLogSlider(value=tokens_per_s, base=10, min=0, max=5, step=0.05,
                                    description="tokens/s", readout_format=".4g")
        self.controls = W.HBox([self.price, self.tps])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self._wire(self.price, self.tps)
        self.update()

    @property
    def dollars_per_million(self) -> float:
        return self.price.value / (self.tps.value * 3600) * 1e6

    def update(self) -> None:
        _swap(self.figure, viz.cost_figure(self.price.value, self.tps.value))
        self.readout.value = (f"<b>${self.dollars_per_million:.4g}</b> per 1M output tokens "
                              f"at {self.tps.value:.4g} tokens/s and ${self.price.value:.4g}"
                              " per hour (the machine busy 100% of the time)")


def cost_calculator(tokens_per_s: float, dollars_per_hour: float = 2.0) -> CostCalculator:
    return CostCalculator(tokens_per_s, dollars_per_hour)


# -- measurements the explorers re-run -----------------------------------------------------------
def time_decode(model, prompt: list[int], n_tokens: int, use_cache: bool = True,
                window: int | None = None, warmup: int = 4, progress: bool = True
                ) -> tuple[list[int], list[float]]:
    """(position, seconds) of each of ``n_tokens`` generated tokens, greedy.

    With the cache the first token includes the prefill of the prompt. Without it
    every step re-runs the whole sequence so far. ``warmup`` untimed steps first pay
    one-off costs (allocations, lazy initialisation) that would distort the first points.
    """
    from tqdm.auto import tqdm

    from .generate import decode_steps, decode_steps_no_cache
    from .hardware import synchronize
    from .kv_cache import KVCache

    if window and not use_cache:
        raise ValueError("a sliding window needs the cache")

    def steps(n: int):
        if not use_cache:
            return decode_steps_no_cache(model, [prompt], n)
        cache = KVCache.for_model(model, 1, window=window) if window else None
        return decode_steps(model, [prompt], n, cache=cache)

    for _ in steps(min(warmup, n_tokens)):
        pass
    label = f"window {window}" if window else "with cache" if use_cache else "no cache"
    secs = []
    synchronize(model.device)
    t0 = time.perf_counter()
    for _ in tqdm(steps(n_tokens), total=n_tokens, desc=label, disable=not progress,
                  leave=False):
        synchronize(model.device)
        t = time.perf_counter()
        secs.append(t - t0)
        t0 = t
    return [len(prompt) + i for i in range(len(secs))], secs


def time_prefill_decode(model, prompt: list[int], lengths: Sequence[int], repeats: int = 3,
                        decode_steps: int = 8, progress: bool = True) -> dict[str, list[float]]:
    """Prefill and decode throughput (tokens/s) at each context length.

    prefill: L tokens in one forward; decode: median seconds of one step with L tokens
    already in the cache. ``prompt`` is cut (or tiled) to each length.
    """
    from tqdm.auto import tqdm

    from .generate import decode_one_token, prefill
    from .kv_cache import KVCache
    from .metrics import Timer

    out: dict[str, list[float]] = {"prefill": [], "decode": []}
    for L in tqdm(lengths, desc="lengths", disable=not progress, leave=False):
        ids = (prompt * (L // len(prompt) + 1))[:L]
        pre, dec = [], []
        for _ in range(repeats + 1):  # the first run warms up, untimed
            cache = KVCache.for_model(model, 1, max_len=L + decode_steps)
            with Timer(model.device) as t:
                logits = prefill(model, [ids], cache)
            pre.append(t.elapsed)
            tok = logits.argmax(-1)
            for _ in range(decode_steps):
                with Timer(model.device) as t:
                    tok = decode_one_token(model, tok, cache).argmax(-1)
                dec.append(t.elapsed)
        out["prefill"].append(L / statistics.median(pre[1:]))
        out["decode"].append(1 / statistics.median(dec[decode_steps:]))
    return out


class CacheTimingExplorer(_Calculator):
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
        _swap(self.figure, viz.token_latency_figure(series))
        parts = []
        for label, (_pos, secs) in series.items():
            parts.append(f"{label}: first {secs[0] * 1e3:.3g} ms, last {secs[-1] * 1e3:.3g} ms, "
                         f"total {sum(secs):.3g} s")
        self.readout.value = "<br>".join(parts)

    def update(self) -> None:  # the slider alone does not re-measure: that takes time
        pass
