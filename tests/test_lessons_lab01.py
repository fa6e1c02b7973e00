"""Lab 01's figures and calculators, and the decode timers its explorer re-runs."""

import math

import pytest
import torch

from infer_lab import timing as metrics  # decode timing lives in infer_lab.timing
from infer_lab.config import PRESETS, ModelConfig
from infer_lab.lessons import lab01_kv_cache as widgets  # lab 01's figures and calculators
from infer_lab.model import Transformer

from figure_checks import assert_titled as _titled


def test_token_latency_figure_in_ms():
    fig = widgets.token_latency_figure({"no cache": ([1, 2, 3], [0.01, 0.02, 0.03]),
                                    "with cache": ([1, 2, 3], [0.01, 0.01, 0.01])})
    _titled(fig)
    assert [t.name for t in fig.data] == ["no cache", "with cache"]
    assert list(fig.data[0].y) == pytest.approx([10, 20, 30])


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


def test_kv_bytes_matches_config():
    for cfg in PRESETS.values():
        assert widgets.kv_bytes(cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 1, 1, 2) == \
            cfg.kv_bytes_per_token(2)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=128)
    return Transformer(cfg).eval()


def test_time_decode_and_explorer(tiny_model):
    pos, secs = metrics.time_decode(tiny_model, [1, 2, 3], 5, progress=False)
    assert pos == [3, 4, 5, 6, 7] and len(secs) == 5 and all(s > 0 for s in secs)
    _, secs = metrics.time_decode(tiny_model, [1, 2, 3], 4, use_cache=False, progress=False)
    assert len(secs) == 4
    _, secs = metrics.time_decode(tiny_model, [1], 20, window=4, progress=False)
    assert len(secs) == 20
    ex = widgets.CacheTimingExplorer(tiny_model, [1, 2], n_tokens=8, max_tokens=16)
    assert [t.name for t in ex.figure.data] == ["no cache", "with cache"]
    ex.length.value = 16
    ex.measure()
    assert len(ex.figure.data[0].x) == 16


def test_time_prefill_decode(tiny_model):
    out = metrics.time_prefill_decode(tiny_model, [1, 2, 3], [4, 16], repeats=1,
                                      decode_steps=2, progress=False)
    assert set(out) == {"prefill", "decode"} and len(out["prefill"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in out["prefill"] + out["decode"])
