"""Constrained output in the serving engine and the server (issue 19, section 4): a
request's constraint masks its own row of logits only; greedy constrained answers equal
constrained_generate's, batched or not; the server's response_format gives JSON that
validates, and refuses schemas it cannot honour."""

import json
import re

import pytest
import torch
from starlette.testclient import TestClient

import infer_lab
from infer_lab.app.constrained import Cursor, constrained_generate, regex_constraint
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.baselines import StaticBatcher
from infer_lab.serving.server import build_app

PATTERN = r"(0|[1-9][0-9]{0,3})( [a-z]+){1,3}\."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "count": {"type": "integer"}},
          "required": ["name", "count"]}


@pytest.fixture(scope="module")
def code_s():
    torch.set_num_threads(1)
    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


def test_constrained_requests_batch_with_plain_ones_and_equal_the_reference(code_s):
    model, tok = code_s
    masks = regex_constraint(PATTERN, tok, model.config.vocab_size)
    prompts = [tok.encode(p) for p in ("x = ", "def f(a):\n    return ", "# count: ")]
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=256))
    seqs = [engine.add_request(p, 24, eos_id=tok.eos_id, constraint=Cursor(masks, 24))
            for p in prompts]
    plain = engine.add_request(prompts[0], 12)
    engine.run()
    for p, seq in zip(prompts, seqs):
        ref = constrained_generate(model, tok, p, masks, 24)
        assert seq.output == ref.tokens and seq.constraint.accepted
        text = tok.decode([t for t in seq.output if t != tok.eos_id])
        assert re.fullmatch(PATTERN, text, re.ASCII), text
    alone = Engine(model, EngineConfig(block_size=4, num_blocks=256)).generate([prompts[0]], 12)
    assert plain.output == alone[0]  # the constrained neighbours changed nothing


def test_bad_constrained_requests_are_refused(code_s):
    model, tok = code_s
    masks = regex_constraint(PATTERN, tok, model.config.vocab_size)
    engine = Engine(model, EngineConfig(block_size=4, num_blocks=64))
    with pytest.raises(ValueError, match="eos_id"):
        engine.add_request([1, 2], 8, constraint=Cursor(masks, 8))
    with pytest.raises(ValueError, match="cannot be satisfied"):
        Cursor(regex_constraint("[a-z]{300}", tok, model.config.vocab_size), 8)
    with pytest.raises(ValueError, match="continuous-batching Engine"):
        StaticBatcher(model, 2).add_request([1, 2], 8, eos_id=tok.eos_id,
                                            constraint=Cursor(masks, 8))


def test_the_server_answers_response_format_with_json_of_the_schema(code_s):
    jsonschema = pytest.importorskip("jsonschema")
    model, tok = code_s
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=256)), tok)
    fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": SCHEMA}}
    with TestClient(app) as client:
        for seed, temperature in ((0, 0.0), (1, 1.0), (2, 1.0)):
            r = client.post("/v1/completions", json={
                "prompt": "item = ", "max_tokens": 40, "temperature": temperature,
                "seed": seed, "response_format": fmt})
            assert r.status_code == 200, r.json()
            jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), SCHEMA)
        for bad, why in [({"type": "json_object"}, "json_schema"),
                         ({"type": "json_schema", "json_schema": {}}, "schema must be"),
                         ({"type": "json_schema", "json_schema": {"schema": {
                             "type": "integer", "minimum": 3}}}, "minimum"),
                         ({"type": "json_schema", "json_schema": {"schema": {
                             "type": "string", "minLength": 120}}}, "cannot be satisfied")]:
            r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3,
                                                     "response_format": bad})
            assert r.status_code == 400 and why in r.json()["error"]["message"], r.json()
        r = client.post("/v1/completions", json={"prompt": "x", "ignore_eos": True,
                                                 "response_format": fmt})
        assert r.status_code == 400 and "ignore_eos" in r.json()["error"]["message"]


def test_a_streamed_constrained_answer_concatenates_to_valid_json(code_s):
    model, tok = code_s
    app = build_app(Engine(model, EngineConfig(block_size=4, num_blocks=256)), tok)
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    body = {"prompt": "item = ", "max_tokens": 40, "temperature": 0, "response_format": fmt}
    with TestClient(app) as client:
        whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole and set(json.loads(text)) == {"name", "count"}
