"""The figures several labs share build with the right traces and titled axes."""

import pytest

from infer_lab.lessons import figures as viz  # the shared figures (were infer_lab.viz)
from infer_lab.lessons import lab00_welcome, lab01_kv_cache, widgets

from figure_checks import assert_titled as _titled


def test_latency_cdf():
    fig = viz.latency_cdf_figure({"a": [0.3, 0.1, 0.2]})
    _titled(fig)
    assert list(fig.data[0].x) == pytest.approx([100, 200, 300])
    assert fig.data[0].y[-1] == 100


def test_kv_growth_and_bar_and_throughput_and_cost():
    fig = viz.kv_growth_figure({"a": ([1, 2], [1e9, 2e9])}, {"GPU": 80e9}, marker=(2, 2e9))
    _titled(fig)
    assert len(fig.data) == 2 and list(fig.data[0].y) == [1, 2]
    fig = viz.bar_figure({"cold": 1.0, "warm": 0.1}, "Cold vs warm", "time (s)")
    assert fig.layout.yaxis.title.text == "time (s)" and list(fig.data[0].x) == ["cold", "warm"]
    fig = lab01_kv_cache.throughput_figure([16, 64], {"prefill": [100, 400], "decode": [50, 50]})
    _titled(fig)
    fig = lab00_welcome.cost_figure(2.0, 1000)
    _titled(fig)
    assert fig.data[1].y[0] == pytest.approx(2.0 / 3.6)


def test_device_memory_options_label_sources():
    opts = widgets.device_memory_options()
    assert any(k.endswith("(spec)") for k in opts)
    assert all(v > 0 for v in opts.values())


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
