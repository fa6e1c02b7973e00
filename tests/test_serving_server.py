"""The HTTP server: OpenAI-style completions, SSE streaming, 429, disconnects, bad input."""

import json
import time

import httpx
import pytest
import torch
from starlette.testclient import TestClient

import infer_lab
from infer_lab.streaming import complete
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.server import ServerThread, TextStream, build_app

PROMPT = "def read_config(path):\n"


@pytest.fixture(scope="module")
def code_s():
    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


class SlowEngine(Engine):
    """Each step sleeps, so requests stay in flight long enough to be observed."""

    def step(self):
        time.sleep(0.01)
        return super().step()


def sse_texts(lines) -> tuple[list[str], list]:
    texts, reasons = [], []
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choice = json.loads(line[6:])["choices"][0]
        texts.append(choice["text"])
        reasons.append(choice["finish_reason"])
    return texts, reasons


@pytest.mark.parametrize("stop", [None, ["\n\n", "return"]])
def test_stream_concatenates_to_non_stream_and_to_complete(code_s, stop):
    model, tok = code_s
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=128)), tok)
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stop": stop}
    with TestClient(app) as client:
        whole = client.post("/v1/completions", json=body)
        assert whole.status_code == 200
        res = whole.json()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = list(r.iter_lines())
        assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
        texts, reasons = sse_texts(lines)
        assert "".join(texts) == res["choices"][0]["text"]
        assert reasons[-1] == res["choices"][0]["finish_reason"] and set(reasons[:-1]) <= {None}
        assert res["choices"][0]["text"] == complete(model, tok, PROMPT, 24, stop=stop)
        assert res["usage"]["prompt_tokens"] == len(tok.encode(PROMPT))
        assert client.get("/health").json()["status"] == "ok"
        metrics = client.get("/metrics").text
        for name in ("infer_lab_queue_length", "infer_lab_running_sequences",
                     "infer_lab_kv_blocks_used", "infer_lab_ttft_seconds_bucket",
                     "infer_lab_tpot_seconds_count", "infer_lab_tokens_per_second"):
            assert name in metrics
        assert "infer_lab_ttft_seconds_count 2.0" in metrics


def test_bad_requests_get_clear_errors_and_the_server_goes_on(code_s):
    model, tok = code_s
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=16)), tok)  # 64 slots
    ctx = model.config.max_seq_len
    with TestClient(app) as client:
        def err(status, needle, **kw):
            r = client.post("/v1/completions", **kw)
            assert r.status_code == status, r.text
            assert needle in r.json()["error"]["message"]

        err(400, "malformed JSON", content=b'{"prompt": "x", ')
        err(400, "must be a JSON object", json=[1, 2])
        err(400, "max_tokens", json={"prompt": "x = 1", "max_tokens": 0})
        err(400, "max_tokens", json={"prompt": "x = 1", "max_tokens": -3})
        err(400, "prompt", json={"prompt": "", "max_tokens": 4})
        err(400, "prompt", json={"max_tokens": 4})
        err(400, "temperature", json={"prompt": "x", "temperature": -1})
        err(400, "context", json={"prompt": [1] * (ctx + 1), "max_tokens": 1})
        err(400, "pool", json={"prompt": [1] * 60, "max_tokens": 8})
        r = client.post("/v1/completions", json={"prompt": "import os\n", "max_tokens": 4,
                                                 "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_queue_full_gets_429_and_disconnect_frees_blocks(code_s):
    model, tok = code_s
    cfg = EngineConfig(block_size=4, num_blocks=256, max_num_seqs=1)
    engine = SlowEngine(model, cfg)
    app = build_app(engine, tok, max_queue=1)  # 1 running + 1 waiting at most
    long = {"prompt": PROMPT, "max_tokens": 500, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        with c.stream("POST", "/v1/completions", json=long) as a:
            lines_a = a.iter_lines()  # kept: dropping the iterator closes the connection
            assert next(lines_a).startswith("data: ")  # `a` is running: it has a token
            with c.stream("POST", "/v1/completions", json=long) as b:
                assert b.status_code == 200  # `b` waits in the queue
                r = c.post("/v1/completions", json={**long, "stream": False})
                assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
                assert "infer_lab_rejected_requests_total 1.0" in c.get("/metrics").text
        # Both clients hung up long before 500 tokens: their requests must be aborted.
        deadline = time.monotonic() + 10
        while engine.block_manager.num_free_blocks < cfg.num_blocks:
            assert time.monotonic() < deadline, "blocks of disconnected clients not freed"
            time.sleep(0.05)
        time.sleep(0.1)
        assert not engine.has_unfinished()
        assert "infer_lab_kv_blocks_used 0.0" in c.get("/metrics").text
        r = c.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 3,
                                            "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    engine.block_manager.check()


def test_text_stream_holds_back_a_possible_stop_string(code_s):
    _, tok = code_s
    ids = tok.encode("x = 1\n\ny = 2")
    ts, out = TextStream(tok, ["\n\ny"]), ""
    for i, t in enumerate(ids):
        delta, hit = ts.push(t, last=i == len(ids) - 1)
        out += delta
        if hit:
            break
    assert hit and out == "x = 1"
    ts = TextStream(tok, ["\n\nz"])  # never completes: the held-back text comes out at the end
    out = "".join(ts.push(t, last=False)[0] for t in ids[:-1]) + ts.flush()
    assert out == tok.decode(ids[:-1])


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_completions_render_the_template_and_answer_like_chat(code_s):
    """/v1/chat/completions: the messages go through the tokenizer's chat template, the
    answer is the assistant message (or its deltas) and equals infer_lab.chat's."""
    from infer_lab.chat import chat, chat_prompt
    from infer_lab.tokenizer import Tokenizer

    model, plain = code_s
    tok = Tokenizer(plain._tok, plain.eos_token, chat_template=CHATML)
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "def add(a, b):"}]
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=128)), tok)
    body = {"messages": messages, "max_tokens": 12, "temperature": 0}
    with TestClient(app) as client:
        res = client.post("/v1/chat/completions", json=body).json()
        assert res["object"] == "chat.completion" and res["id"].startswith("chatcmpl-")
        message = res["choices"][0]["message"]
        assert message["role"] == "assistant"
        assert message["content"] == chat(model, tok, messages, max_new_tokens=12)
        assert res["usage"]["prompt_tokens"] == len(tok.encode(chat_prompt(tok, messages)))
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == message["content"]
        # bad conversations and a completion model get 400s that say why
        for bad, why in [({"messages": []}, "non-empty list"),
                         ({"messages": [{"role": "robot", "content": "hi"}]}, "role must be"),
                         ({"messages": messages, "prompt": "x"}, "unsupported field 'prompt'"),
                         ({"max_tokens": 4}, "'messages' is required")]:
            r = client.post("/v1/chat/completions", json=bad)
            assert r.status_code == 400 and why in r.json()["error"]["message"], (bad, r.json())
    with TestClient(build_app(Engine(model, EngineConfig(block_size=4, num_blocks=64)),
                              plain)) as client:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]


def test_usage_reports_the_prompt_tokens_the_prefix_cache_served(code_s):
    """Prompt caching at the API: a second request that repeats the first one's prompt
    (a shared system prompt; the earlier turns of a chat) reports the reused full blocks
    as usage.prompt_tokens_details.cached_tokens, and answers as it would without them."""
    from infer_lab.chat import chat_prompt
    from infer_lab.tokenizer import Tokenizer

    model, plain = code_s
    tok = Tokenizer(plain._tok, plain.eos_token, chat_template=CHATML)
    system = {"role": "system", "content": "You write Python. " * 12}
    turn1 = [system, {"role": "user", "content": "def add(a, b):"}]
    bodies = {"cached": [], "plain": []}
    for label, on in (("cached", True), ("plain", False)):
        engine = Engine(model, EngineConfig(block_size=4, num_blocks=256,
                                            enable_prefix_caching=on))
        with TestClient(build_app(engine, tok)) as client:
            first = client.post("/v1/chat/completions", json={
                "messages": turn1, "max_tokens": 6, "temperature": 0}).json()
            turn2 = turn1 + [first["choices"][0]["message"],
                             {"role": "user", "content": "now subtract"}]
            second = client.post("/v1/chat/completions", json={
                "messages": turn2, "max_tokens": 6, "temperature": 0}).json()
            bodies[label] = [first, second]
    (c1, c2), (p1, p2) = bodies["cached"], bodies["plain"]
    details = [b["usage"]["prompt_tokens_details"]["cached_tokens"] for b in (c1, c2, p1, p2)]
    first_len = len(tok.encode(chat_prompt(tok, turn1)))
    assert details[0] == 0 and details[2] == details[3] == 0
    assert first_len // 4 * 4 - 4 <= details[1] < c2["usage"]["prompt_tokens"]
    assert [b["choices"][0]["message"] for b in (c1, c2)] == \
        [b["choices"][0]["message"] for b in (p1, p2)]
