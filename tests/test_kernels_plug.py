"""use_kernels swaps norms, the SwiGLU activation, quantized linears and attention (flash
attention through the cache contract) for kernel-backed modules, and the serving engine's
paged pool decodes through the paged-attention kernel; greedy tokens equal those without
kernels (under Triton's interpreter on CPU, compiled on CUDA)."""

import copy

import pytest
import torch

from infer_lab.config import get_config
from infer_lab.generate import generate
from infer_lab.kernels import runtime
from infer_lab.kernels.plug import (
    FlashAttentionView,
    KernelAttention,
    KernelQuantLinear,
    KernelRMSNorm,
    KernelSwiGLU,
    use_kernels,
)
from infer_lab.kv_cache import KVCache, NoCache
from infer_lab.model import Transformer
from infer_lab.quant import quantize_model
from infer_lab.quant.kv import QuantizedKVCache
from infer_lab.serving import Engine, EngineConfig
from infer_lab.serving.paged_attention import PagedKVCache

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or runtime.interpreting()),
                                reason="needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("scheme", [None, "int8", "int4-g64"])
def test_greedy_tokens_with_kernels_equal_without(tiny, scheme):
    pytest.importorskip("triton")
    model = quantize_model(copy.deepcopy(tiny), scheme) if scheme else tiny
    plugged = use_kernels(copy.deepcopy(model))
    assert plugged["KernelRMSNorm"] == 2 * tiny.config.n_layer + 1
    assert plugged["KernelSwiGLU"] == tiny.config.n_layer
    assert plugged["KernelAttention"] == tiny.config.n_layer
    if scheme:
        assert plugged["KernelQuantLinear"] > 0
    kernel_model = copy.deepcopy(model)
    use_kernels(kernel_model)
    assert isinstance(kernel_model.norm, KernelRMSNorm)
    assert isinstance(kernel_model.layers[0].mlp, KernelSwiGLU)
    if scheme:
        assert isinstance(kernel_model.layers[0].attn.wqkv, KernelQuantLinear)
    prompt = [[3, 1, 4, 1, 5]]
    want = generate(model, prompt, 6, eos_id=None)
    assert generate(kernel_model, prompt, 6, eos_id=None) == want
    x = torch.randint(0, tiny.config.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(kernel_model(x), model(x), atol=1e-4, rtol=1e-4)


def _flash_calls(monkeypatch) -> list:
    """Count the flash kernel's launches (so a test knows attention went through it)."""
    from infer_lab.kernels import flash_attention as fa

    calls, real = [], fa.flash_attention_triton
    monkeypatch.setattr(fa, "flash_attention_triton",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def test_attention_through_the_flash_kernel_equals_sdpa(tiny, monkeypatch):
    """Prefill then decode through a KVCache, a left-padded batch, an int8 KV cache and a
    forward without a cache: the flash kernel runs, and logits and tokens are SDPA's."""
    pytest.importorskip("triton")
    kernel_model = copy.deepcopy(tiny)
    use_kernels(kernel_model)
    assert isinstance(kernel_model.layers[0].attn, KernelAttention)
    # same parameter names: a state dict saved either way loads into the other
    assert kernel_model.state_dict().keys() == tiny.state_dict().keys()
    calls = _flash_calls(monkeypatch)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5]]  # of different lengths: left padding
    assert generate(kernel_model, prompts, 5, eos_id=None) == generate(tiny, prompts, 5,
                                                                       eos_id=None)
    assert any(shape[2] == 1 for shape in calls) and any(shape[2] > 1 for shape in calls)
    x = torch.randint(0, tiny.config.vocab_size, (2, 9))
    with torch.no_grad():
        for make in (lambda m: None, lambda m: NoCache(2, "cpu"),
                     lambda m: QuantizedKVCache.for_model(m, batch=2, max_len=16, bits=8)):
            torch.testing.assert_close(kernel_model(x, make(kernel_model)), tiny(x, make(tiny)),
                                       atol=1e-4, rtol=1e-4)
        # a chunk that continues a cache: queries at positions 9.., keys 0..
        a, b = KVCache.for_model(kernel_model, 2, 16), KVCache.for_model(tiny, 2, 16)
        kernel_model(x, a), tiny(x, b)
        y = torch.randint(0, tiny.config.vocab_size, (2, 3))
        torch.testing.assert_close(kernel_model(y, a), tiny(y, b), atol=1e-4, rtol=1e-4)


def test_a_window_cache_keeps_its_own_attention(tiny, monkeypatch):
    pytest.importorskip("triton")
    kernel_model = copy.deepcopy(tiny)
    use_kernels(kernel_model)
    calls = _flash_calls(monkeypatch)
    x = torch.randint(0, tiny.config.vocab_size, (1, 12))
    ring = lambda m: KVCache.for_model(m, 1, window=4)
    with torch.no_grad():
        torch.testing.assert_close(kernel_model(x, ring(kernel_model)), tiny(x, ring(tiny)))
    assert not calls  # the ring buffer's read is its own: FlashAttentionView passed it on
    assert FlashAttentionView(ring(tiny)).cache.window == 4


def test_heads_the_flash_kernel_cannot_tile_keep_sdpa_and_say_so():
    cfg = get_config("code-m", n_layer=1, d_model=60, n_head=3, n_kv_head=3, d_ff=64,
                     vocab_size=64, max_seq_len=32)  # head_dim 20
    model = Transformer(cfg).eval()
    with pytest.warns(UserWarning, match="power of two.*got 20"):
        plugged = use_kernels(model)
    assert "KernelAttention" not in plugged and plugged["KernelRMSNorm"] == 3


def test_engine_decodes_through_the_paged_kernel(tiny, monkeypatch):
    """The engine's pool with decode_attention="kernel" gives every request the tokens
    of block-by-block decode, with preemption and prefix sharing in the workload."""
    pytest.importorskip("triton")
    from infer_lab.kernels import paged_attention as pa

    calls, real = [], pa.paged_attention_triton
    monkeypatch.setattr(pa, "paged_attention_triton",
                        lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 13, 1, 9)]
    prompts.append(prompts[1][:8] + [7, 7])  # shares two blocks with prompt 1
    runs = {}
    for how in ("blocks", "kernel"):
        cfg = EngineConfig(block_size=4, num_blocks=12, max_num_batched_tokens=16,
                           decode_attention=how)
        engine = Engine(tiny, cfg)
        assert engine.cache.decode_attention == how
        runs[how] = engine.generate(prompts, 6)
    assert runs["kernel"] == runs["blocks"]
    assert calls and all(len(shape) == 3 for shape in calls)  # (B, H, D) decode queries


def test_decode_attention_choices_are_checked(tiny, monkeypatch):
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        EngineConfig(decode_attention="flash")
    assert PagedKVCache.for_model(tiny, 4, 4).decode_attention == "blocks"  # auto on a CPU
    from infer_lab.kernels import runtime

    monkeypatch.setattr(runtime, "backend", lambda *t: "reference")  # no Triton here
    with pytest.raises(ValueError, match="needs Triton"):
        PagedKVCache.for_model(tiny, 4, 4, decode_attention="kernel")
