"""Compiled decoding (issue 16): the static cache equals the contiguous one, the compiled
step gives eager's greedy tokens, compiles once (no recompilation across steps or
requests of the same shape), and falls back to eager, saying why, when it cannot build.

Compiling is slow on 2 cores (about 10-20 s for the 1-layer model here): one decoder is
compiled for the module and reused.
"""

import pytest
import torch

from infer_lab.config import get_config
from infer_lab.generate import generate
from infer_lab.kv_cache import KVCache
from infer_lab.model import Transformer
from infer_lab.runtimes.compiled import CompiledDecoder, break_even_tokens
from infer_lab.runtimes.static_cache import StaticKVCache


def small_model(n_layer: int = 1) -> Transformer:
    torch.manual_seed(0)
    cfg = get_config("code-m", n_layer=n_layer, d_model=64, n_head=4, n_kv_head=2, d_ff=128,
                     vocab_size=256, max_seq_len=64)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(10)  # peaked logits: no greedy near-ties
    return m


@pytest.fixture(scope="module")
def compiled():
    model = small_model()
    return model, CompiledDecoder(model, batch=2, max_len=24)


def test_static_cache_equals_the_contiguous_cache():
    """Prefill of a left-padded batch, then decode steps: same logits (eager)."""
    model = small_model(2)
    prompts = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    pos = torch.tensor([[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]])
    static, contiguous = StaticKVCache.for_model(model, 2, 16), KVCache.for_model(model, 2, 16)
    with torch.no_grad():
        real = pos >= 0  # a padding query's output is never used (it sees every slot)
        torch.testing.assert_close(model(prompts, static, pos)[real],
                                   model(prompts, contiguous, pos)[real])
        nxt = pos[:, -1:] + 1
        for t in range(3):
            tok = torch.tensor([[9 + t], [20 + t]])
            torch.testing.assert_close(model(tok, static, nxt), model(tok, contiguous))
            nxt = nxt + 1
    with pytest.raises(ValueError, match="pass positions"):
        static.begin(1, None)
    with pytest.raises(ValueError, match="does not fit a static cache of 16"):
        static.begin(1, torch.tensor([[16], [3]]))


def test_compiled_greedy_tokens_equal_eager_and_compile_once(compiled):
    model, dec = compiled
    prompts = [[3, 1, 4, 1, 5], [9, 2]]  # different lengths: left padding
    want = generate(model, prompts, 12, eos_id=None)
    assert dec.generate(prompts, 12) == want
    assert dec.compiled and dec.graphs == 1 and dec.compile_seconds > 0
    # another request of the same shape: the same graph, no recompilation
    others = [[7, 7, 7], [8, 6, 4, 2, 0, 1]]
    assert dec.generate(others, 18) == generate(model, others, 18, eos_id=None)
    assert dec.graphs == 1


def test_bad_requests_are_refused(compiled):
    _, dec = compiled
    with pytest.raises(ValueError, match="compiled for 2 rows"):
        dec.generate([[1, 2]], 3)
    with pytest.raises(ValueError, match="do not fit the static cache of 24"):
        dec.generate([[1] * 10, [2]], 20)


def test_a_backend_that_cannot_build_falls_back_to_eager(monkeypatch):
    import torch._inductor.config as inductor_config

    model = small_model()
    # the C++ compiler inductor would call does not exist
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    torch._dynamo.reset()
    dec = CompiledDecoder(model, batch=1, max_len=12)
    with pytest.warns(UserWarning, match="could not build the decode step, decoding eagerly"):
        got = dec.generate([[3, 1, 4]], 6)
    assert got == generate(model, [[3, 1, 4]], 6, eos_id=None)
    assert not dec.compiled and dec.fallback_reason
    torch._dynamo.reset()


def test_break_even():
    assert break_even_tokens(10.0, 0.010, 0.005) == pytest.approx(2000)
    assert break_even_tokens(10.0, 0.005, 0.006) == float("inf")
