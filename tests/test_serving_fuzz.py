"""Fuzzing the HTTP server: any body gets 2xx or 4xx, never 5xx, and the server stays up.

Two tests:

* a property over the request schema (hypothesis): arbitrary JSON values, JSON objects
  with the real field names and arbitrary values, plausible requests, and raw bytes;
  after each, ``/health`` is still 200;
* a bounded soak against a real server on 127.0.0.1: a fixed number of requests from a
  few threads mixing valid, invalid, streamed and dropped ones; afterwards the server
  is healthy, the token and error counters add up, and the KV pool is empty.

The model is a tiny random one over the real code-s tokenizer (same vocabulary), so
each valid request costs a few milliseconds.
"""

import json
import random
import re
import threading
import time

import httpx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import infer_lab
from infer_lab.config import ModelConfig
from infer_lab.model import Transformer
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.schema import CompletionRequest
from infer_lab.serving.server import ServerThread, build_app

FIELDS = tuple(CompletionRequest.model_fields)

CTX = 48


@pytest.fixture(scope="module")
def model_tok():
    _, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                                    d_model=16, max_seq_len=CTX)).eval()
    return model, tok


json_leaf = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
             | st.text(max_size=8))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)
plausible = st.fixed_dictionaries({
    "prompt": st.text(min_size=0, max_size=12) | st.lists(st.integers(-2, 4100), max_size=6),
    "max_tokens": st.integers(-1, 8) | st.integers(0, 10 ** 6),
}, optional={
    "temperature": st.sampled_from([0, 0.7, 1e-40, 2.0]) | st.floats(allow_nan=True),
    "top_p": st.floats(0, 1) | json_leaf,
    "top_k": st.integers(-1, 5) | json_leaf,
    "seed": st.integers(-1, 2 ** 65) | json_leaf,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3) | json_leaf,
    "stream": st.booleans() | json_leaf,
    "ignore_eos": st.booleans(),
    "n": st.integers(0, 2) | json_leaf,
})
# Valid requests too: a fuzz that only sends garbage never reaches the engine.
valid = st.fixed_dictionaries({
    "prompt": st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
    | st.lists(st.integers(0, 4095), min_size=1, max_size=6),
    "max_tokens": st.integers(1, 8),
}, optional={
    "temperature": st.sampled_from([0, 0.7, 1e-40, 2.0]),
    "top_p": st.floats(0.01, 1), "top_k": st.integers(1, 50), "seed": st.integers(0, 2 ** 40),
    "stop": st.text(min_size=1, max_size=3), "stream": st.booleans(),
    "ignore_eos": st.booleans(),
})
with_real_fields = st.dictionaries(st.sampled_from(FIELDS + ("logprobs", "temprature")),
                                   json_any, max_size=5)
bodies = (valid.map(lambda b: json.dumps(b).encode())
          | plausible.map(lambda b: json.dumps(b).encode())
          | with_real_fields.map(lambda b: json.dumps(b).encode())
          | json_any.map(lambda b: json.dumps(b).encode())
          | st.binary(max_size=40)
          | st.sampled_from([b'{"prompt": "x", "temperature": NaN}',
                             b'{"prompt": "x", "max_tokens": 1e400}',
                             b"[" * 5000 + b"]" * 5000,
                             b'{"prompt": "\\ud800"}', b"\xff\xfe"]))


def test_any_body_gets_2xx_or_4xx_and_the_server_stays_healthy(model_tok):
    model, tok = model_tok
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=4))
    statuses: dict[int, int] = {}

    with TestClient(build_app(engine, tok)) as client:
        @settings(max_examples=250, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(body=bodies)
        def fuzz(body):
            r = client.post("/v1/completions", content=body,
                            headers={"content-type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            event(f"status {r.status_code}")
            assert r.status_code < 500, (body[:200], r.text[:300])
            if r.status_code >= 400:
                assert r.json()["error"]["message"]
            assert client.get("/health").status_code == 200

        fuzz()
    print("fuzz statuses:", statuses)
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 10, statuses
    assert not engine.has_unfinished() and engine.block_manager.num_used_blocks == 0
    engine.block_manager.check()


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_soak_mixed_traffic_then_healthy_counters_and_empty_pool(model_tok):
    """A fixed count of requests; every loop is bounded in count and time."""
    model, tok = model_tok
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=96, max_num_seqs=6))
    app = build_app(engine, tok, max_queue=256)
    n_requests, max_tokens = 160, 12
    rng = random.Random(0)
    plan = [rng.choice(["valid", "valid", "stream", "drop", "invalid"]) for _ in range(n_requests)]
    tally = {"tokens": 0, "dropped": 0, "invalid": 0, "ok": 0}
    lock = threading.Lock()
    invalid = [{"prompt": "x", "temperature": float("nan")}, {"prompt": [], "max_tokens": 2},
               {"prompt": "x", "max_tokens": 10 ** 9}, {"prompt": "x", "stream": "yes"},
               {"prompt": [4096]}, {"prompt": "x", "logprobs": 3}, [1, 2]]

    def one(i: int, kind: str, c: httpx.Client) -> None:
        body = {"prompt": f"def f{i}(x):\n    return", "max_tokens": max_tokens,
                "temperature": rng.choice([0, 0.8]), "seed": i, "ignore_eos": True}
        if kind == "invalid":
            r = c.post("/v1/completions", content=json.dumps(invalid[i % len(invalid)]))
            assert r.status_code == 400, r.text
            with lock:
                tally["invalid"] += 1
        elif kind == "valid":
            r = c.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            with lock:
                tally["tokens"] += r.json()["usage"]["completion_tokens"]
                tally["ok"] += 1
        else:
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                if kind == "drop":  # read one event, then hang up mid-stream
                    assert next(lines).startswith("data: ")
                    with lock:
                        tally["dropped"] += 1
                    return
                events = [ln for ln in lines if ln.startswith("data: {")]
            with lock:
                tally["tokens"] += len(events)
                tally["ok"] += 1

    errors: list[BaseException] = []

    def worker(ids: list[int]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in ids:
                try:
                    one(i, plan[i], c)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

    with ServerThread(app) as server:
        threads = [threading.Thread(target=worker, args=(list(range(w, n_requests, 4)),))
                   for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "soak did not finish in time"
        assert not errors, errors[:3]
        with httpx.Client(base_url=server.url, timeout=30) as c:
            deadline = time.monotonic() + 20
            while engine.has_unfinished():  # dropped streams are aborted asynchronously
                assert time.monotonic() < deadline, "requests left running"
                time.sleep(0.05)
            assert c.get("/health").json()["status"] == "ok"
            metrics = c.get("/metrics").text
    generated = _metric(metrics, "infer_lab_generated_tokens_total")
    assert tally["ok"] + tally["dropped"] + tally["invalid"] == n_requests
    # Every delivered token was counted; a dropped stream generated 1..max_tokens more.
    assert tally["tokens"] + tally["dropped"] <= generated
    assert generated <= tally["tokens"] + tally["dropped"] * max_tokens
    assert _metric(metrics, "infer_lab_bad_requests_total") == tally["invalid"]
    assert _metric(metrics, "infer_lab_request_errors_total") == 0
    assert _metric(metrics, "infer_lab_kv_blocks_used") == 0
    assert engine.block_manager.num_used_blocks == 0
    engine.block_manager.check()
