"""telemetry.py: off by default, batched and throttled when on, and the events it sends."""

from __future__ import annotations

import pytest
import torch

from infer_lab import observe, telemetry
from infer_lab.bench.telemetry import JsonChannel
from infer_lab.generate import decode_steps, generate
from infer_lab.model import Transformer
from infer_lab.serving import Engine, EngineConfig
from infer_lab.speculative import speculative_decode


@pytest.fixture
def channel():
    """The module publisher attached to a fake comm with one subscriber, and its observer
    among the defaults (what connect() does in a kernel); restored after."""
    ch = JsonChannel()
    telemetry.publisher.attach(ch)
    telemetry.publisher.subscribe("test")
    observe.add_default(telemetry.observer)
    yield ch
    observe.remove_default(telemetry.observer)
    telemetry.publisher.attach(None)


def events(ch: JsonChannel, type: str | None = None) -> list[dict]:
    return [e for m in ch.messages for e in m["events"] if type is None or e["type"] == type]


def test_off_outside_a_kernel():
    # pytest is plain Python: importing infer_lab offered no comm and left the publisher off.
    assert telemetry.connect() is False
    assert telemetry.publisher.active is False and telemetry.publisher.channel is None
    assert telemetry.trace("generate") is None


def test_a_channel_without_subscribers_stays_off():
    ch = JsonChannel()
    telemetry.publisher.attach(ch)
    try:
        assert not telemetry.publisher.active  # a comm offered, no panel open
        telemetry.publisher.event("phase", id="x")
        telemetry.publisher.flush()
        assert ch.messages == []
    finally:
        telemetry.publisher.attach(None)


def test_generate_reports_phases_tokens_and_latency(tiny, channel):
    out = generate(tiny, [[1, 2, 3]], 40)
    assert len(out[0]) == 40
    phases = [e["phase"] for e in events(channel, "phase")]
    assert phases == ["prefill", "decode", "done"]
    assert sum(e["n"] for e in events(channel, "tokens")) == 40
    (lat,) = events(channel, "latency")
    assert lat["tokens"] == 40 and lat["ttft"] > 0 and lat["tpot"] > 0
    assert all(m["memory"]["rss"] > 0 for m in channel.messages)


def test_stopping_early_still_finishes_the_request(tiny, channel):
    it = decode_steps(tiny, [[1, 2]], 30)
    next(it), next(it)
    it.close()  # what collect() does at EOS, through garbage collection
    assert [e["phase"] for e in events(channel, "phase")][-1] == "done"
    assert events(channel, "latency")[0]["tokens"] == 2


def test_throttle_bounds_the_message_count():
    """10,000 token events over 2 simulated seconds -> at most 2 / 0.25 + 1 messages."""
    now = [0.0]
    pub = telemetry.Publisher(interval=0.25, clock=lambda: now[0])
    ch = JsonChannel()
    pub.attach(ch)
    pub.subscribe("a")
    for i in range(10_000):
        now[0] = i * 2.0 / 10_000
        pub.tokens("r", 1, 0.0002)
    pub.flush()
    assert len(ch.messages) <= 2 / 0.25 + 2
    assert sum(e["n"] for m in ch.messages for e in m["events"]) == 10_000  # nothing lost


def test_real_decode_sends_few_messages(tiny, channel):
    import time

    t0 = time.perf_counter()
    generate(tiny, [[5, 6, 7]], 256)
    elapsed = time.perf_counter() - t0
    assert len(channel.messages) <= elapsed / telemetry.FLUSH_INTERVAL + 2


def test_unsubscribe_turns_it_off_and_drops_the_buffer():
    pub = telemetry.Publisher()
    ch = JsonChannel()
    pub.attach(ch)
    pub.subscribe("a")
    pub.subscribe("b")
    pub.subscribe("a", on=False)
    assert pub.active  # b still watches
    pub._events.append({"type": "phase"})
    pub.subscribe("b", on=False)
    assert not pub.active and pub._events == []


def test_engine_reports_every_request_and_the_kv_pool(tiny, channel):
    engine = Engine(tiny, EngineConfig(num_blocks=32, block_size=8, max_num_seqs=2))
    outs = engine.generate([[1, 2, 3], [4, 5, 6, 7], [8] * 20], max_tokens=6)
    by_id: dict[str, list[str]] = {}
    for e in events(channel, "phase"):
        by_id.setdefault(e["id"], []).append(e["phase"])
    assert len(by_id) == 3
    for phases in by_id.values():
        assert phases[0] in ("queued", "prefill") and phases[-1] == "done"
        assert "decode" in phases
    assert any(p[0] == "queued" for p in by_id.values())  # max_num_seqs=2: one waits
    assert sum(e["n"] for e in events(channel, "tokens")) == sum(len(o) for o in outs)
    kv = events(channel, "kv")[-1]
    assert kv["total"] == 32 and kv["used"] + kv["free"] == 32 and kv["running"] == 0
    assert len(events(channel, "latency")) == 3


def test_speculative_reports_acceptance(tiny, channel):
    torch.manual_seed(1)
    draft = Transformer(tiny.config).eval()
    out, stats = speculative_decode(tiny, draft, [1, 2, 3], 20, k=3)
    (spec,) = events(channel, "spec")
    assert spec["proposed"] == stats.proposed and spec["alpha"] == stats.alpha
    assert sum(e["n"] for e in events(channel, "tokens")) == len(out)


class FakeComm:
    """The parts of ipykernel's Comm that telemetry uses."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.msg_cb = self.close_cb = None

    def on_msg(self, cb):
        self.msg_cb = cb

    def on_close(self, cb):
        self.close_cb = cb

    def send(self, data):
        self.sent.append(data)


def test_comm_protocol_subscribe_and_close(tiny):
    c = FakeComm()
    telemetry._bind(c)
    try:
        assert not telemetry.publisher.active
        c.msg_cb({"content": {"data": {"type": "subscribe", "on": True, "client": "tab1"}}})
        assert telemetry.publisher.active
        generate(tiny, [[1, 2]], 5, observers=[telemetry.observer])
        assert c.sent and c.sent[-1]["events"]
        c.close_cb({})
        assert not telemetry.publisher.active and telemetry.publisher.channel is None
    finally:
        telemetry.publisher.attach(None)


def test_overhead_bench_runs(tiny):
    from infer_lab.bench.telemetry import measure, per_token_seconds

    r = measure(tiny, [1, 2, 3], 32, repeats=1)
    assert r["on_s"] > 0 and r["off_s"] > 0 and r["messages_per_call"] >= 1
    assert 0 < per_token_seconds(2000) < 1e-3  # microseconds, against a ms decode step
    assert telemetry.publisher.active is False  # restored


def test_bench_command_runs_quick(tmp_path):
    from infer_lab.bench import main

    out = tmp_path / "t.json"
    result = main(["telemetry", "--quick", "--model", "code-s", "--json", str(out)])
    assert result["ratios"]["telemetry_overhead"] > 0 and out.exists()
