import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_lab.config import ModelConfig
from infer_lab.metrics import (RequestLatency, Timer, latency_from_events, latency_from_times,
                               measure_generation, peak_memory, percentiles, summarize,
                               time_call, weight_bytes)
from infer_lab.model import Transformer


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
       st.lists(st.floats(0, 100), min_size=1, max_size=5, unique=True))
def test_percentiles_match_numpy(values, qs):
    got = percentiles(values, qs)
    want = np.percentile(np.array(values, dtype=np.float64), qs)
    assert list(got) == list(qs)
    np.testing.assert_allclose(list(got.values()), want, rtol=1e-9, atol=1e-6)


def test_percentiles_rejects_bad_input():
    with pytest.raises(ValueError):
        percentiles([])
    with pytest.raises(ValueError):
        percentiles([1.0], (101,))


def test_latency_from_times():
    r = latency_from_times([0.5, 0.6, 0.7, 0.9])
    assert r.ttft == 0.5 and r.e2e == 0.9 and r.n_tokens == 4
    assert r.tpot == pytest.approx(0.4 / 3)
    assert r.tokens_per_s == pytest.approx(4 / 0.9)
    one = latency_from_times([0.2])
    assert math.isnan(one.tpot) and one.tokens_per_s == pytest.approx(5.0)
    with pytest.raises(ValueError):
        latency_from_times([])


def test_latency_from_events_uses_t():
    class E:
        def __init__(self, t):
            self.t = t

    assert latency_from_events([E(0.1), E(0.3)]).tpot == pytest.approx(0.2)


def test_summarize_structure_and_values():
    reqs = [RequestLatency(ttft=t, tpot=t / 10, e2e=2 * t, n_tokens=10)
            for t in (1.0, 2.0, 3.0)]
    s = summarize(reqs)
    assert set(s) == {"ttft", "tpot", "e2e", "tokens_per_s"}
    assert s["ttft"] == {"p50": 2.0, "p95": pytest.approx(2.9), "p99": pytest.approx(2.98)}
    assert s["e2e"]["p50"] == 4.0
    only_nan = summarize([RequestLatency(1.0, math.nan, 1.0, 1)])
    assert math.isnan(only_nan["tpot"]["p50"])


def test_timer_and_time_call():
    with Timer("cpu") as t:
        time.sleep(0.02)
    assert 0.015 < t.elapsed < 1.0
    calls = []
    times = time_call(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(times) == 3 and len(calls) == 5 and all(x >= 0 for x in times)


def _tiny(tie: bool = True, vocab: int = 64) -> Transformer:
    cfg = ModelConfig(vocab_size=vocab, n_layer=1, n_head=2, d_model=16, d_ff=32,
                      max_seq_len=32, tie_embeddings=tie)
    return Transformer(cfg).eval()


def test_weight_bytes_counts_tied_weights_once():
    tied, untied = _tiny(True), _tiny(False)
    assert weight_bytes(tied) == tied.config.n_params * 4
    assert weight_bytes(untied) == untied.config.n_params * 4
    assert weight_bytes(untied) - weight_bytes(tied) == 64 * 16 * 4
    assert weight_bytes(tied.to(torch.bfloat16)) == tied.config.n_params * 2


def test_weight_bytes_counts_buffers():
    m = torch.nn.Module()
    m.register_buffer("q", torch.zeros(10, dtype=torch.int8))
    m.register_buffer("scratch", torch.zeros(100), persistent=False)  # not a weight
    assert weight_bytes(m) == 10


def test_peak_memory():
    mem = peak_memory("cpu")
    assert mem.peak_rss_bytes > 10 * 2**20  # a Python process with torch is > 10 MiB
    assert set(mem.to_dict()) == {"peak_rss_bytes", "cuda_peak_bytes"}


class CharTokenizer:
    eos_id = 127

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i != self.eos_id)


def test_measure_generation():
    torch.manual_seed(0)
    model = _tiny(vocab=128)
    stats = measure_generation(model, CharTokenizer(), ["abc", "hello", "x"],
                               max_new_tokens=5, warmup=1, progress=False)
    assert len(stats.requests) == 3 and len(stats.texts) == 3
    assert all(r.n_tokens == 5 for r in stats.requests)  # EOS is ignored
    assert all(0 < r.ttft <= r.e2e for r in stats.requests)
    assert stats.summary["ttft"]["p50"] > 0 and stats.tokens_per_s > 0
    assert stats.weight_bytes == weight_bytes(model)
