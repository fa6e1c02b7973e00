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
from infer_lab.runtimes.gemv import ReductionLinear, reduction_linears
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


def test_reduction_linear_equals_linear():
    """Eagerly it is F.linear itself; compiled, its one-token product is the same numbers
    (a different summation order: fp32 rounding only); several rows keep the GEMM."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80)
    red = ReductionLinear(lin)
    assert red.weight is lin.weight and red.bias is lin.bias
    x1, x3 = torch.randn(1, 1, 48), torch.randn(3, 1, 48)
    with torch.no_grad():
        assert torch.equal(red(x1), lin(x1)) and torch.equal(red(x3), lin(x3))
        fn = torch.compile(red, fullgraph=True, dynamic=False)
        torch.testing.assert_close(fn(x1), lin(x1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fn(x3), lin(x3), rtol=1e-5, atol=1e-5)


def test_batch_one_decodes_through_reductions():
    model = small_model(2)
    dec = CompiledDecoder(model, batch=1, max_len=20)
    assert dec.reductions  # the CPU, batch-1 default
    swapped = [n for n, m in dec._model.named_modules() if isinstance(m, ReductionLinear)]
    assert "lm_head" in swapped and len(swapped) == 1 + 5 * 2  # head + 5 linears per block
    assert dec._model.lm_head.weight is model.tok_emb.weight  # still tied, nothing copied
    assert not any(isinstance(m, ReductionLinear) for m in model.modules())  # untouched
    prompt = [[3, 1, 4, 1, 5, 9]]
    assert dec.generate(prompt, 12) == generate(model, prompt, 12, eos_id=None)
    assert dec.compiled and dec.graphs == 1
    assert not CompiledDecoder(model, batch=2, max_len=20).reductions
    assert type(reduction_linears(model).layers[0].attn.wqkv) is ReductionLinear


def test_a_fused_int8_model_compiles_to_its_eager_tokens():
    """The packed kernels and the quantized tied table inside one graph (the table's id
    check, a host sync, stays outside compiled code)."""
    from infer_lab.quant.apply import quantize_model
    from infer_lab.quant.embedding import QuantizedEmbedding
    from infer_lab.surgery import shared_copy

    q = quantize_model(shared_copy(small_model()), "int8-packed+head")
    assert isinstance(q.tok_emb, QuantizedEmbedding)
    dec = CompiledDecoder(q, batch=1, max_len=16)
    assert dec.generate([[5, 4, 3]], 8) == generate(q, [[5, 4, 3]], 8, eos_id=None)
    assert dec.compiled and dec.graphs == 1
    with pytest.raises(IndexError, match="token ids must lie in"):
        q(torch.tensor([[300]]))  # eagerly, a bad id is still refused


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
