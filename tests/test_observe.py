"""observe.py: who is told (given observers, or the declared defaults) and what they hear."""

from __future__ import annotations

import pytest
import torch

from infer_lab import observe
from infer_lab.generate import decode_steps, generate
from infer_lab.model import Transformer
from infer_lab.serving import Engine, EngineConfig
from infer_lab.speculative import speculative_decode


@pytest.fixture
def default():
    """A Recorder among the defaults for one test."""
    rec = observe.Recorder()
    observe.add_default(rec)
    yield rec
    observe.remove_default(rec)


def test_given_observers_are_told_and_the_defaults_are_not(tiny, default):
    rec = observe.Recorder()
    generate(tiny, [[1, 2, 3], [4, 5]], 7, observers=[rec])
    (req,) = rec.requests
    assert req["source"] == "generate" and req["batch"] == 2
    assert req["tokens"] == 14 and req["done"] and req["spec"] is None
    assert default.requests == []
    generate(tiny, [[1, 2]], 3, observers=[])  # nobody at all
    assert len(rec.requests) == 1 and default.requests == []


def test_none_means_the_declared_defaults(tiny, default):
    observe.add_default(default)  # a second add is a no-op
    assert [o for o in observe.default_observers if o is default] == [default]
    generate(tiny, [[1, 2, 3]], 4)
    assert [r["tokens"] for r in default.requests] == [4]
    observe.remove_default(default)
    generate(tiny, [[1, 2, 3]], 4)
    assert len(default.requests) == 1


def test_an_observer_that_does_not_listen_costs_no_request(tiny):
    deaf, rec = observe.Recorder(listening=False), observe.Recorder()
    assert observe.request([deaf], "generate") is None
    generate(tiny, [[1]], 3, observers=[deaf, rec])
    assert deaf.requests == [] and rec.requests[0]["tokens"] == 3


def test_stopping_early_still_ends_the_request(tiny):
    rec = observe.Recorder()
    it = decode_steps(tiny, [[1, 2]], 30, observers=[rec])
    next(it), next(it)
    it.close()
    assert rec.requests[0]["tokens"] == 2 and rec.requests[0]["done"]


def test_speculative_decode_reports_its_acceptance(tiny):
    torch.manual_seed(1)
    draft = Transformer(tiny.config).eval()
    a, b = observe.Recorder(), observe.Recorder()
    out, stats = speculative_decode(tiny, draft, [1, 2, 3], 12, k=3, observers=[a, b])
    for rec in (a, b):  # both hear everything
        (req,) = rec.requests
        assert req["source"] == "speculative" and req["info"] == {"k": 3}
        assert req["tokens"] == len(out) and req["done"]
        assert req["spec"]["proposed"] == stats.proposed
        assert req["spec"]["alpha"] == stats.alpha


def test_the_engine_hands_over_plain_step_data(tiny):
    rec = observe.Recorder()
    engine = Engine(tiny, EngineConfig(num_blocks=32, block_size=8, max_num_seqs=2),
                    observers=[rec])
    outs = engine.generate([[1, 2, 3], [4, 5, 6, 7], [8] * 20], max_tokens=5)
    assert rec.steps and all(isinstance(s, observe.EngineStep) for s in rec.steps)
    assert {s.engine for s in rec.steps} == {id(engine)}
    assert all(s.kv_used + s.kv_free == s.kv_total == 32 for s in rec.steps)
    assert sum(s.num_sampled for s in rec.steps) == sum(len(o) for o in outs)
    finished = [f for s in rec.steps for f in s.finished]
    assert sorted(f.tokens for f in finished) == sorted(len(o) for o in outs)
    assert any(p == "queued" for s in rec.steps for _, p in s.phases)  # one waits
    assert [s.unfinished for s in rec.steps][-1] is False


def test_an_observer_that_raises_does_not_stop_serving(tiny, caplog):
    class Broken(observe.Recorder):
        def engine_step(self, step: observe.EngineStep) -> None:
            raise RuntimeError("boom")

    rec = observe.Recorder()
    engine = Engine(tiny, EngineConfig(num_blocks=16, block_size=8),
                    observers=[Broken(), rec])
    (out,) = engine.generate([[1, 2, 3]], max_tokens=4)
    assert len(out) == 4 and rec.steps  # the next observer still heard every step
    assert "serving goes on" in caplog.text
