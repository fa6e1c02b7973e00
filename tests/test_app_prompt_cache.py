"""Prompt caching at the API (issue 19, section 1): the cost model, and the engine's
prefix cache seen per request: cached tokens reported, the same outputs as without it."""

import pytest
import torch

from infer_lab.app.prompt_cache import (
    Prices,
    measure,
    request_cost,
    saving,
    serve_one,
    shared_prefix_workload,
)
from infer_lab.serving.engine import Engine, EngineConfig


def test_cached_input_tokens_are_priced_at_their_rate():
    p = Prices(input=2.0, cached_input=0.5, output=8.0)
    assert request_cost(1000, 600, 10, p) == pytest.approx((400 * 2 + 600 * 0.5 + 80) / 1e6)
    with pytest.raises(ValueError, match="cached"):
        request_cost(10, 11, 0, p)
    with pytest.raises(ValueError, match="more than uncached"):
        Prices(input=1.0, cached_input=2.0)
    with pytest.raises(ValueError, match=">= 0"):
        Prices(output=-1.0)


@pytest.fixture(scope="module")
def code_s():
    import infer_lab

    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


def test_a_shared_system_prompt_is_served_from_the_cache_with_the_same_output(code_s):
    model, tok = code_s
    system = tok.encode("import os\nimport sys\n\n\ndef main(argv):\n    " * 6)
    prompts = shared_prefix_workload(system, [tok.encode(f"x{i} = ") for i in range(3)])
    cfg = EngineConfig(num_blocks=256, block_size=16)
    on, off = Engine(model, cfg), Engine(model, EngineConfig(num_blocks=256, block_size=16,
                                                             enable_prefix_caching=False))
    for i, p in enumerate(prompts):
        a, out_a = serve_one(on, p, 6, Prices())
        b, out_b = serve_one(off, p, 6, Prices())
        assert out_a == out_b and b.cached_tokens == 0
        if i:  # the system prompt's full blocks were computed by the first request
            assert a.cached_tokens == len(system) // 16 * 16 and a.cost < b.cost


def test_a_conversation_reuses_its_earlier_turns(code_s):
    model, tok = code_s
    turns = [tok.encode("def f(a, b):\n    return a + b\n" * 3) for _ in range(3)]
    rows = measure(model, turns, max_tokens=4, turns=True,
                   config=EngineConfig(num_blocks=256, block_size=16))
    cached, plain = rows["cached"], rows["uncached"]
    assert cached[0].cached_tokens == 0 and all(r.cached_tokens == 0 for r in plain)
    for prev, now in zip(cached, cached[1:]):  # the conversation so far, in full blocks
        assert now.cached_tokens >= (prev.prompt_tokens + prev.completion_tokens - 16) // 16 * 16
    s = saving(rows)
    assert 0 < s["cost_saving"] < 1 and 0 < s["cached_fraction"] < 1
    with pytest.raises(ValueError, match="one request"):
        saving({"cached": cached[:1], "uncached": plain[:1]})
