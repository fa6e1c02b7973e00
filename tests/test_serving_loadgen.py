"""The load generator: Poisson arrivals, held-out workloads, reports, in process and over HTTP."""

import itertools
import math
import random
import statistics

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.model import Transformer
from infer_lab.serving import DynamicBatcher, Engine, EngineConfig, StaticBatcher
from infer_lab.serving.loadgen import (
    LoadReport,
    RequestResult,
    _function_samples,
    make_workload,
    poisson_arrivals,
    run_engine,
    run_http,
)
from infer_lab.serving.server import ServerThread, build_app
from infer_lab.zoo import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4096, n_layer=2, n_head=2, d_model=32, max_seq_len=256)
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def workload(tok):
    return make_workload(tok, 8, rate=100.0, seed=1, output_len=(4, 12),
                         prompt_chars=(20, 120), max_seq_len=256)


def test_poisson_gaps_are_exponential_with_mean_one_over_rate():
    t = poisson_arrivals(4000, 50.0, random.Random(0))
    gaps = [b - a for a, b in itertools.pairwise(t)]
    assert t[0] == 0 and all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(1 / 50, rel=0.08)  # exponential: sd = mean
    assert poisson_arrivals(3, math.inf, random.Random(0)) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        poisson_arrivals(3, 0.0, random.Random(0))


def test_function_bodies_are_found():
    text = "x = 1\ndef f(a):\n    b = a\n\n    return b\ny = 2\n    def g():\n        pass\n"
    (a1, b1), (a2, b2) = _function_samples(text)
    assert text[:a1].endswith("def f(a):\n") and text[a1:b1] == "    b = a\n\n    return b\n"
    assert text[a2:b2] == "        pass\n"


def test_workload_is_deterministic_bounded_and_shares_a_prefix(tok):
    kw = {"rate": 5.0, "output_len": (16, 64), "prompt_chars": (50, 300), "max_seq_len": 512}
    w = make_workload(tok, 30, seed=3, **kw)
    assert [r.prompt for r in w] == [r.prompt for r in make_workload(tok, 30, seed=3, **kw)]
    assert all(16 <= r.max_tokens <= 64 and len(r.prompt) + r.max_tokens <= 512 for r in w)
    assert len({r.max_tokens for r in w}) > 3  # lengths come from the data, not a constant
    assert [r.arrival for r in w] == sorted(r.arrival for r in w)
    system = "# You are a careful Python programmer.\n" * 5
    prefix = tok.encode(system)
    shared = make_workload(tok, 5, seed=3, shared_prefix=system, **kw)
    assert all(r.prompt[:len(prefix)] == prefix for r in shared)


def check_report(report: LoadReport, workload) -> None:
    assert sorted(r.tokens for r in report.results) == sorted(r.max_tokens for r in workload)
    s = report.summary()
    for name in ("ttft", "e2e", "tpot"):
        assert s[name]["p50"] <= s[name]["p95"] <= s[name]["p99"]
    assert s["output_tokens"] == sum(r.max_tokens for r in workload)
    assert s["tokens_per_s"] > 0 and s["goodput"] == pytest.approx(s["requests_per_s"])
    assert report.summary(slo_ttft=0.0)["goodput"] == 0.0
    assert all(r.ttft <= r.e2e for r in report.results)


@pytest.mark.parametrize("kind", ["engine", "static", "dynamic"])
def test_run_engine_open_loop(tiny, workload, kind):
    engine = {"engine": lambda: Engine(tiny, EngineConfig(block_size=4, num_blocks=256)),
              "static": lambda: StaticBatcher(tiny, 3),
              "dynamic": lambda: DynamicBatcher(tiny, 3)}[kind]()
    report = run_engine(engine, workload, mode="open")
    check_report(report, workload)
    if kind == "engine":
        assert len(report.kv) == len(engine.records) and report.kv[0].blocks_used > 0


def test_run_engine_closed_loop_keeps_concurrency(tiny, workload):
    engine = Engine(tiny, EngineConfig(block_size=4, num_blocks=256))
    report = run_engine(engine, workload, mode="closed", concurrency=2)
    check_report(report, workload)
    assert max(r.num_running for r in engine.records) <= 2


def test_run_http_streams_every_token(tiny, tok, workload):
    engine = Engine(tiny, EngineConfig(block_size=4, num_blocks=256))
    with ServerThread(build_app(engine, tok)) as server:
        report = run_http(server.url, workload, mode="open")
        check_report(report, workload)
        closed = run_http(server.url, workload[:4], mode="closed", concurrency=2)
        assert closed.rejected == 0 and len(closed.results) == 4


def test_goodput_counts_requests_meeting_both_objectives():
    rs = [RequestResult(0.0, ttft, tpot, 1.0, 10, 5, 1.0)
          for ttft, tpot in [(0.1, 0.01), (0.5, 0.01), (0.1, 0.2), (0.2, 0.02)]]
    report = LoadReport(rs, start=0.0, end=2.0)
    s = report.summary(slo_ttft=0.25, slo_tpot=0.05)
    assert s["goodput"] == pytest.approx(2 / 2.0) and s["requests_per_s"] == pytest.approx(2.0)
    assert s["tokens_per_s"] == pytest.approx(20.0)
