"""Lab 00's figures and calculators: roofline, latency distribution, memory, cost."""

import pytest

from infer_lab.config import PRESETS
from infer_lab.hardware import PRESETS as HW
from infer_lab.hardware import HardwareSpec
from infer_lab.lessons import lab00_welcome as viz  # lab 00's figures and calculators

from figure_checks import assert_titled as _titled


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


def test_latency_distribution_has_percentile_lines():
    secs = [i / 1000 for i in range(1, 101)]
    fig = viz.latency_distribution_figure(secs, "TTFT")
    _titled(fig)
    assert len(fig.layout.shapes) == 3
    texts = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("p50") for t in texts) and any(t.startswith("p99") for t in texts)
    assert fig.layout.shapes[2].x0 == pytest.approx(99.01)  # numpy-style p99, ms


def test_memory_bars_figure():
    sizes = {"m1": {"fp32": 4e9, "int4": 0.5e9}, "m2": {"fp32": 8e9, "int4": 1e9}}
    fig = viz.memory_bars_figure(sizes, {"GPU": 24e9})
    _titled(fig, categorical_x=True)
    assert [t.name for t in fig.data] == ["fp32", "int4"]
    assert list(fig.data[1].y) == pytest.approx([0.5, 1.0])
    assert len(fig.layout.shapes) == 1


def test_model_memory_calculator():
    calc = viz.ModelMemoryCalculator(models=("gpt2", "llama-3-8b"))
    assert [t.name for t in calc.figure.data] == list(viz.DTYPE_BITS)
    fp32 = calc.figure.data[0]
    assert fp32.y[1] == pytest.approx(PRESETS["llama-3-8b"].n_params * 4 / 1e9)
    calc.models.value = ("llama-3-70b",)
    assert list(calc.figure.data[0].x) == ["llama-3-70b"]
    calc.dtypes.value = ("int4",)
    assert len(calc.figure.data) == 1
    assert "llama-3-70b" in calc.readout.value


def test_cost_calculator():
    calc = viz.CostCalculator(tokens_per_s=100.0, dollars_per_hour=3.6)
    assert calc.dollars_per_million == pytest.approx(10.0)
    assert "$10" in calc.readout.value
    calc.price.value = 7.2
    assert calc.figure.data[1].y[0] == pytest.approx(20.0)
