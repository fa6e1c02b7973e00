"""Figures build with the right traces and titled axes; calculators follow their controls."""

import math

import pytest
import torch

from infer_lab import viz, widgets
from infer_lab.config import PRESETS, ModelConfig
from infer_lab.hardware import PRESETS as HW
from infer_lab.hardware import HardwareSpec
from infer_lab.model import Transformer
from infer_lab.scale import SCALES, current_scale


def _titled(fig, categorical_x=False):
    axes = [fig.layout.yaxis] if categorical_x else [fig.layout.xaxis, fig.layout.yaxis]
    for axis in axes:
        assert axis.title.text and "(" in axis.title.text, axis.title.text  # a unit
    assert fig.layout.title.text


def test_roofline_figure():
    measured = HardwareSpec("this CPU", "cpu", 20.0, {"fp32": 0.1}, source="measured")
    fig = viz.roofline_figure([measured, HW["H100 SXM"]], points=[("decode", 0.5, 5e9)])
    _titled(fig)
    names = [t.name for t in fig.data]
    assert names == ["this CPU (measured)", "H100 SXM (spec)", "decode"]
    cpu = fig.data[0]
    assert max(cpu.y) == pytest.approx(0.1)  # the flat roof, TFLOP/s
    assert cpu.y[0] == pytest.approx(0.1 * 20.0e9 / 1e12)  # the slope: I x bandwidth
    assert fig.data[0].line.width > fig.data[1].line.width  # measured drawn bolder
    assert fig.layout.xaxis.type == "log"


def test_token_latency_figure_in_ms():
    fig = viz.token_latency_figure({"no cache": ([1, 2, 3], [0.01, 0.02, 0.03]),
                                    "with cache": ([1, 2, 3], [0.01, 0.01, 0.01])})
    _titled(fig)
    assert [t.name for t in fig.data] == ["no cache", "with cache"]
    assert list(fig.data[0].y) == pytest.approx([10, 20, 30])


def test_latency_distribution_has_percentile_lines():
    secs = [i / 1000 for i in range(1, 101)]
    fig = viz.latency_distribution_figure(secs, "TTFT")
    _titled(fig)
    assert len(fig.layout.shapes) == 3
    texts = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("p50") for t in texts) and any(t.startswith("p99") for t in texts)
    assert fig.layout.shapes[2].x0 == pytest.approx(99.01)  # numpy-style p99, ms


def test_latency_cdf():
    fig = viz.latency_cdf_figure({"a": [0.3, 0.1, 0.2]})
    _titled(fig)
    assert list(fig.data[0].x) == pytest.approx([100, 200, 300])
    assert fig.data[0].y[-1] == 100


def test_memory_bars_figure():
    sizes = {"m1": {"fp32": 4e9, "int4": 0.5e9}, "m2": {"fp32": 8e9, "int4": 1e9}}
    fig = viz.memory_bars_figure(sizes, {"GPU": 24e9})
    _titled(fig, categorical_x=True)
    assert [t.name for t in fig.data] == ["fp32", "int4"]
    assert list(fig.data[1].y) == pytest.approx([0.5, 1.0])
    assert len(fig.layout.shapes) == 1


def test_kv_growth_and_bar_and_throughput_and_cost():
    fig = viz.kv_growth_figure({"a": ([1, 2], [1e9, 2e9])}, {"GPU": 80e9}, marker=(2, 2e9))
    _titled(fig)
    assert len(fig.data) == 2 and list(fig.data[0].y) == [1, 2]
    fig = viz.bar_figure({"cold": 1.0, "warm": 0.1}, "Cold vs warm", "time (s)")
    assert fig.layout.yaxis.title.text == "time (s)" and list(fig.data[0].x) == ["cold", "warm"]
    fig = viz.throughput_figure([16, 64], {"prefill": [100, 400], "decode": [50, 50]})
    _titled(fig)
    fig = viz.cost_figure(2.0, 1000)
    _titled(fig)
    assert fig.data[1].y[0] == pytest.approx(2.0 / 3.6)


def test_model_memory_calculator():
    calc = widgets.ModelMemoryCalculator(models=("gpt2", "llama-3-8b"))
    assert [t.name for t in calc.figure.data] == list(viz.DTYPE_BITS)
    fp32 = calc.figure.data[0]
    assert fp32.y[1] == pytest.approx(PRESETS["llama-3-8b"].n_params * 4 / 1e9)
    calc.models.value = ("llama-3-70b",)
    assert list(calc.figure.data[0].x) == ["llama-3-70b"]
    calc.dtypes.value = ("int4",)
    assert len(calc.figure.data) == 1
    assert "llama-3-70b" in calc.readout.value


def test_kv_calculator_follows_presets_and_fields():
    calc = widgets.KVCalculator(preset="llama-3-8b", context=8192, batch=1)
    cfg = PRESETS["llama-3-8b"]
    want = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 8192 * 2
    assert calc.bytes() == want
    assert len(calc.figure.data) == 3  # GQA curve, MHA curve, marker
    assert "GQA saves 4x" in calc.readout.value
    calc.preset.value = "llama-2-7b"  # MHA: one curve and the marker
    assert calc.n_kv_head.value == 32 and len(calc.figure.data) == 2
    calc.batch.value = 8
    assert calc.bytes() == 8 * 2 * 32 * 32 * 128 * 8192 * 2
    calc.dtype.value = "int4"
    assert calc.bytes() == 8 * 2 * 32 * 32 * 128 * 8192 * 0.5
    calc.n_kv_head.value = 5
    assert "multiple" in calc.readout.value


def test_cost_calculator():
    calc = widgets.CostCalculator(tokens_per_s=100.0, dollars_per_hour=3.6)
    assert calc.dollars_per_million == pytest.approx(10.0)
    assert "$10" in calc.readout.value
    calc.price.value = 7.2
    assert calc.figure.data[1].y[0] == pytest.approx(20.0)


def test_kv_bytes_matches_config():
    for cfg in PRESETS.values():
        assert widgets.kv_bytes(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, 1, 2) == \
            cfg.kv_bytes_per_token(2)


def test_device_memory_options_label_sources():
    opts = widgets.device_memory_options()
    assert any(k.endswith("(spec)") for k in opts)
    assert all(v > 0 for v in opts.values())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=128)
    return Transformer(cfg).eval()


def test_time_decode_and_explorer(tiny_model):
    pos, secs = widgets.time_decode(tiny_model, [1, 2, 3], 5, progress=False)
    assert pos == [3, 4, 5, 6, 7] and len(secs) == 5 and all(s > 0 for s in secs)
    _, secs = widgets.time_decode(tiny_model, [1, 2, 3], 4, use_cache=False, progress=False)
    assert len(secs) == 4
    _, secs = widgets.time_decode(tiny_model, [1], 20, window=4, progress=False)
    assert len(secs) == 20
    ex = widgets.CacheTimingExplorer(tiny_model, [1, 2], n_tokens=8, max_tokens=16)
    assert [t.name for t in ex.figure.data] == ["no cache", "with cache"]
    ex.length.value = 16
    ex.measure()
    assert len(ex.figure.data[0].x) == 16


def test_time_prefill_decode(tiny_model):
    out = widgets.time_prefill_decode(tiny_model, [1, 2, 3], [4, 16], repeats=1,
                                      decode_steps=2, progress=False)
    assert set(out) == {"prefill", "decode"} and len(out["prefill"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in out["prefill"] + out["decode"])


def test_scale(monkeypatch):
    monkeypatch.setenv("INFER_LAB_SCALE", "ci")
    assert current_scale().name == "ci"
    monkeypatch.setenv("INFER_LAB_SCALE", " Laptop ")
    assert current_scale() is SCALES["laptop"]
    monkeypatch.setenv("INFER_LAB_SCALE", "auto")
    assert current_scale().name == ("gpu" if torch.cuda.is_available() else "laptop")
    monkeypatch.delenv("INFER_LAB_SCALE")
    assert current_scale().name in ("gpu", "laptop")
    monkeypatch.setenv("INFER_LAB_SCALE", "huge")
    with pytest.raises(ValueError, match="ci, laptop, gpu, auto"):
        current_scale()
    for s in SCALES.values():
        assert s.decode_len + 64 <= PRESETS["code-m"].max_seq_len


def test_tradeoff_figure():
    fig = viz.tradeoff_figure({"a": (0.0, 2.0), "b": (1.0, 0.5)}, "Trade-off",
                              "KV memory (MB)", "decode time (s)")
    _titled(fig)
    assert [t.name for t in fig.data] == ["a", "b"]


def test_kv_growth_picks_a_readable_unit():
    fig = viz.kv_growth_figure({"small": ([1, 1000], [8e3, 8e6])})
    assert fig.layout.yaxis.title.text == "KV-cache memory (MB)"
    assert list(fig.data[0].y) == pytest.approx([0.008, 8.0])
    assert viz.bytes_unit(5e10) == (1e9, "GB") and viz.bytes_unit(12) == (1.0, "bytes")
