"""Per-key token buckets (plain Python, a fake clock) and the server's 429 / degradation."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import pytest
import torch
from starlette.testclient import TestClient
from test_serving_server import SlowEngine  # each step sleeps: requests stay queued

import infer_lab
from infer_lab.app.degrade import DegradePolicy
from infer_lab.app.rate_limit import BucketConfig, NeverFits, RateLimitConfig, RateLimiter
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.admission import ANONYMOUS, add_cli_args, bearer_key, from_cli_args
from infer_lab.serving.server import ServerThread, build_app, main


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def limiter(rate=2.0, burst=4.0, **kw) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(RateLimitConfig(BucketConfig(rate, burst), **kw), clock), clock


# -- the bucket math -------------------------------------------------------------------
def test_burst_then_the_steady_rate_and_an_exact_retry_after():
    lim, clock = limiter(rate=2, burst=4)
    assert [lim.try_acquire("a").ok for _ in range(6)] == [True] * 4 + [False] * 2
    assert lim.try_acquire("a") == (False, 0.5)  # one token at 2 tokens/s
    clock.t = 0.2
    assert lim.try_acquire("a") == pytest.approx((False, 0.3))
    passed = 4
    for k in range(1, 21):  # every 0.5 s exactly one more request fits
        clock.t = 0.5 * k
        assert lim.try_acquire("a").ok
        assert lim.try_acquire("a") == (False, 0.5)
        passed += 1
    assert passed == 4 + 2 * 10  # burst + rate * T over T = 10 s
    clock.t = 1000.0  # idle: the level stops at the burst, it does not save up more
    assert [lim.try_acquire("a").ok for _ in range(5)] == [True] * 4 + [False]


def test_retry_after_is_exact_for_a_larger_cost_and_then_it_fits():
    lim, clock = limiter(rate=2, burst=4)
    assert lim.try_acquire("a", 4).ok
    ok, wait = lim.try_acquire("a", 3)
    assert not ok and wait == 1.5
    clock.t = 1.5
    assert lim.try_acquire("a", 3) == (True, 0.0)
    assert lim.try_acquire("a", 0.5) == (False, 0.25)


def test_a_clock_that_steps_back_does_not_drain_or_fill_the_bucket():
    lim, clock = limiter(rate=1, burst=2)
    clock.t = 10.0
    assert lim.try_acquire("a", 2).ok
    clock.t = 5.0
    assert lim.try_acquire("a") == (False, 1.0)


def test_a_refusal_charges_nothing_and_a_refund_gives_back():
    lim, _ = limiter(rate=1, burst=3, global_bucket=BucketConfig(1, 3))
    assert lim.try_acquire("a", 2).ok
    assert lim.try_acquire("a", 2) == (False, 1.0)  # refused: the level is still 1
    assert lim.try_acquire("b", 1).ok  # the shared token "a" was refused is still there
    assert lim.try_acquire("b", 1) == (False, 1.0)  # now the shared bucket is empty
    lim.refund("a", 2)  # "a" back to 3, the shared bucket to 2
    assert lim.try_acquire("a", 2).ok
    assert lim.try_acquire("a", 1) == (False, 1.0)  # "a" has 1 left, the shared none
    assert lim.num_refused == 3


def test_request_and_token_costs():
    assert limiter()[0].cost(100, 50) == 1.0
    assert limiter(cost="tokens")[0].cost(100, 50) == 150.0


def test_idle_keys_are_forgotten_and_that_changes_nothing():
    lim, clock = limiter(rate=1, burst=2, max_keys=2)
    lim.try_acquire("a", 2)
    lim.try_acquire("b", 2)
    clock.t = 1.0  # "a" and "b" are half full: neither is forgotten
    lim.try_acquire("c")
    assert set(lim.buckets) == {"a", "b", "c"}
    clock.t = 5.0
    assert lim.forget_idle() == 3 and lim.buckets == {}
    assert [lim.try_acquire("a").ok for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize("make, needle", [
    (lambda: BucketConfig(0, 4), "rate"), (lambda: BucketConfig(-1, 4), "rate"),
    (lambda: BucketConfig(float("nan"), 4), "rate"), (lambda: BucketConfig(1, 0.5), "burst"),
    (lambda: BucketConfig(1, float("inf")), "burst"),
    (lambda: RateLimitConfig(BucketConfig(1, 1), cost="words"), "cost"),
    (lambda: RateLimitConfig(BucketConfig(1, 1), max_keys=0), "max_keys"),
    (lambda: limiter()[0].try_acquire("a", 0), "positive"),
    (lambda: limiter()[0].try_acquire("a", float("nan")), "positive"),
    (lambda: DegradePolicy(-1, 8), "queue_threshold"), (lambda: DegradePolicy(1, 0), "cap"),
])
def test_invalid_parameters_raise_a_clear_value_error(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_a_request_larger_than_the_burst_can_never_fit():
    lim, _ = limiter(rate=100, burst=4)
    with pytest.raises(NeverFits, match="never fit"):
        lim.try_acquire("a", 5)
    lim, _ = limiter(rate=100, burst=10, global_bucket=BucketConfig(100, 4))
    with pytest.raises(NeverFits, match="never fit"):
        lim.try_acquire("a", 5)


# -- fairness ---------------------------------------------------------------------------
def flood(lim: RateLimiter, clock: FakeClock, seconds: int = 10) -> tuple[int, int, int]:
    """A flooder asks 100 times a second, a polite key once a second: (flooder passed,
    polite passed, polite asked)."""
    flooder = polite = asked = 0
    for tick in range(seconds * 100):
        clock.t = tick / 100
        flooder += lim.try_acquire("flooder").ok
        if tick % 100 == 50:
            asked += 1
            polite += lim.try_acquire("polite").ok
    return flooder, polite, asked


def test_a_flooding_key_cannot_starve_a_polite_one():
    lim, clock = limiter(rate=1, burst=5, global_bucket=BucketConfig(10, 10))
    flooder, polite, asked = flood(lim, clock)
    assert polite == asked == 10
    assert flooder <= 5 + 1 * 10  # its own burst + rate * T, not the server's


def test_a_global_bucket_alone_lets_one_key_take_everything():
    """Why the per-key buckets: with only a shared limit, first come first served."""
    lim, clock = limiter(rate=1000, burst=1000, global_bucket=BucketConfig(10, 10))
    flooder, polite, asked = flood(lim, clock)
    assert polite < asked / 2 and flooder > 90


# -- the server --------------------------------------------------------------------------
def test_bearer_keys_and_cli_flags():
    assert bearer_key("Bearer sk-1") == bearer_key("bearer  sk-1 ") == "sk-1"
    for anon in (None, "", "Bearer", "Bearer  ", "Basic dXNlcg=="):
        assert bearer_key(anon) == ANONYMOUS
    p = argparse.ArgumentParser()
    add_cli_args(p)
    lim, deg = from_cli_args(p.parse_args(["--rate", "2", "--burst", "8", "--global-rate",
                                           "20", "--degrade-queue", "4"]))
    assert lim.config.per_key == BucketConfig(2, 8) and lim.config.global_bucket.burst == 20
    assert deg == DegradePolicy(4, 64)
    assert from_cli_args(p.parse_args([])) == (None, None)
    for bad in (["--rate", "0"], ["--rate", "1", "--burst", "0"], ["--burst", "3"]):
        with pytest.raises(ValueError):
            from_cli_args(p.parse_args(bad))
    with pytest.raises(SystemExit):  # the server says so before it loads a model
        main(["--rate", "-1"])


@pytest.fixture(scope="module")
def code_s():
    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


async def load(url: str, plan: list[tuple[str, int]]) -> list[httpx.Response]:
    """A bounded load generator: ``count`` concurrent requests per key, all at once."""
    body = {"prompt": "def add(a, b):\n", "max_tokens": 4, "temperature": 0,
            "ignore_eos": True}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return list(await asyncio.gather(*(
            client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {k}"})
            for key, count in plan for k in [key] * count)))


def test_end_to_end_the_flooding_key_gets_429s_and_the_polite_key_is_served(code_s):
    model, tok = code_s
    lim = RateLimiter(RateLimitConfig(BucketConfig(0.01, 4), BucketConfig(100, 100)))
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=256, max_num_seqs=4)),
                    tok, limiter=lim)
    with ServerThread(app) as server:
        flood_r = asyncio.run(load(server.url, [("flooder", 12)]))
        polite_r = asyncio.run(load(server.url, [("polite", 3)]))
        mixed = asyncio.run(load(server.url, [("flooder", 4), ("polite", 1)]))
        metrics = httpx.get(f"{server.url}/metrics").text
    codes = sorted(r.status_code for r in flood_r)
    assert codes == [200] * 4 + [429] * 8  # its burst, then nothing for ~100 s
    for r in flood_r + mixed[:4]:
        if r.status_code == 429:
            err = r.json()["error"]
            assert err["type"] == "rate_limit_exceeded" and "retry in" in err["message"]
            assert 90 <= int(r.headers["Retry-After"]) <= 100  # 1 token at 0.01/s, rounded up
    assert [r.status_code for r in polite_r + mixed[4:]] == [200] * 4
    assert [r.status_code for r in mixed[:4]] == [429] * 4
    assert all(r.json()["usage"]["completion_tokens"] == 4 for r in polite_r)
    assert "infer_lab_rate_limited_requests_total 12.0" in metrics


def test_a_request_over_the_burst_gets_a_429_that_says_it_can_never_fit(code_s):
    model, tok = code_s
    lim = RateLimiter(RateLimitConfig(BucketConfig(0.001, 32), cost="tokens"))
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=4)), tok, limiter=lim)
    with TestClient(app) as client:
        ok = client.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 4})
        assert ok.status_code == 200
        r = client.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 40})
        assert r.status_code == 429 and "Retry-After" not in r.headers
        assert "never fit" in r.json()["error"]["message"]
        # the engine refuses this one (over the pool): its charge is given back
        r = client.post("/v1/completions", json={"prompt": [1] * 12, "max_tokens": 8})
        assert r.status_code == 400 and "pool" in r.json()["error"]["message"]
        assert lim.buckets[ANONYMOUS].level == pytest.approx(32 - 4 - len(tok.encode("x = ")),
                                                             abs=0.5)


LONG = {"prompt": "def f(x):\n", "max_tokens": 30, "temperature": 0, "ignore_eos": True}


async def until(c: httpx.AsyncClient, needle: str) -> None:
    """Wait until /metrics shows ``needle`` (the engine thread has seen the request)."""
    deadline = time.monotonic() + 30
    while needle not in (await c.get("/metrics")).text:
        assert time.monotonic() < deadline, f"never saw {needle!r}"
        await asyncio.sleep(0.01)


async def queue_up(url: str) -> dict:
    """One long request runs, then each next one joins the queue: 0, 1, 2, 3 wait ahead."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        async def stream(body: dict) -> tuple[httpx.Headers, list[dict]]:
            async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                return r.headers, [json.loads(x[6:]) async for x in r.aiter_lines()
                                   if x.startswith("data: {")]

        a = asyncio.create_task(stream({**LONG, "max_tokens": 150}))
        await until(c, "infer_lab_running_sequences 1.0")
        b = asyncio.create_task(stream(LONG))  # nobody waits ahead of it: served as asked
        await until(c, "infer_lab_queue_length 1.0")
        s = asyncio.create_task(stream(LONG))  # 1 waits ahead: degraded
        await until(c, "infer_lab_queue_length 2.0")
        r = asyncio.create_task(c.post("/v1/completions", json=LONG))  # 2 ahead
        await until(c, "infer_lab_queue_length 3.0")
        small = await c.post("/v1/completions", json={**LONG, "max_tokens": 2})  # within cap
        out = dict(zip("absr", await asyncio.gather(a, b, s, r)), small=small)
        out["later"] = await c.post("/v1/completions", json=LONG)  # the queue has drained
        out["metrics"] = (await c.get("/metrics")).text
    return out


def test_past_the_queue_threshold_max_tokens_is_capped_and_the_answer_says_so(code_s):
    model, tok = code_s
    engine = SlowEngine(model, EngineConfig(block_size=4, num_blocks=256, max_num_seqs=1))
    app = build_app(engine, tok, degrade=DegradePolicy(queue_threshold=1, max_tokens_cap=3))
    with ServerThread(app) as server:
        out = asyncio.run(queue_up(server.url))
    for name, n in (("a", 150), ("b", 30)):
        headers, chunks = out[name]
        assert "X-Degraded" not in headers and len(chunks) == n
        assert all("degraded" not in ch for ch in chunks)
    headers, chunks = out["s"]
    assert "max_tokens=3" in headers["X-Degraded"] and len(chunks) == 3
    assert chunks[0]["degraded"]["max_tokens"] == 3  # said once, in the first chunk
    assert all("degraded" not in ch for ch in chunks[1:])
    r = out["r"]
    body = r.json()
    assert body["degraded"] == {"reason": "queue_length", "max_tokens": 3,
                                "requested_max_tokens": 30, "queue_length": 2,
                                "queue_threshold": 1}
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert r.headers["X-Degraded"].startswith("queue_length; max_tokens=3")
    for name, n in (("small", 2), ("later", 30)):
        assert "degraded" not in out[name].json() and "X-Degraded" not in out[name].headers
        assert out[name].json()["usage"]["completion_tokens"] == n
    assert "infer_lab_degraded_requests_total 2.0" in out["metrics"]
