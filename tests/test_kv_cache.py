"""Cached decoding must equal the full forward pass it replaces."""

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import decode_one_token, generate, left_pad, prefill
from infer_lab.kv_cache import KVCache
from infer_lab.model import Transformer

CONFIGS = {
    "llama": ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                         max_seq_len=256),
    "gpt2": ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=256,
                        block="gpt2", bias=True, qkv_bias=True),
}


def peaked_model(block: str) -> Transformer:
    """A random model with sharpened logits, so greedy ties are unlikely."""
    torch.manual_seed(0)
    m = Transformer(CONFIGS[block]).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(20)
    return m


@pytest.mark.parametrize("block", ["llama", "gpt2"])
def test_cached_logits_match_full_forward(block):
    model = peaked_model(block)
    seq = torch.randint(0, 97, (1, 40))
    full = model(seq)  # (1, 40, V)
    cache = KVCache.for_model(model, 1, 64)
    with torch.no_grad():
        logits = [model(seq[:, :25], cache)]  # prefill a chunk, then one token at a time
        for t in range(25, 40):
            logits.append(decode_one_token(model, seq[:, t], cache)[:, None])
    stepped = torch.cat(logits, dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block", ["llama", "gpt2"])
@pytest.mark.parametrize("lengths", [[7], [3, 11, 1, 6]])
def test_cached_greedy_equals_uncached_for_128_steps(block, lengths):
    model = peaked_model(block)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]
    cached = generate(model, prompts, 128)
    uncached = generate(model, prompts, 128, use_cache=False)
    assert cached == uncached
    assert all(len(r) == 128 for r in cached)


@pytest.mark.parametrize("block", ["llama", "gpt2"])
def test_batch_rows_equal_rows_alone(block):
    model = peaked_model(block)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
    batched = generate(model, prompts, 20)
    alone = [generate(model, [p], 20)[0] for p in prompts]
    assert batched == alone


def test_padded_batch_logits_match_unpadded():
    model = peaked_model("llama")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    cache = KVCache.for_model(model, 2, 16)
    last = prefill(model, prompts, cache)  # (2, V)
    for b, p in enumerate(prompts):
        ref = model(torch.tensor([p]))[0, -1]
        torch.testing.assert_close(last[b], ref, atol=1e-4, rtol=1e-4)


def test_sliding_window_matches_masked_full_attention():
    model = peaked_model("llama")
    W = 8
    seq = torch.randint(0, 97, (1, 30))
    cache = KVCache.for_model(model, 1, window=W)
    with torch.no_grad():
        out = [model(seq[:, :12], cache)]
        for t in range(12, 30):
            out.append(model(seq[:, t:t + 1], cache))
    stepped = torch.cat(out, dim=1)
    # Reference: full forward with a banded causal mask over explicit positions.
    from infer_lab.model import attention_mask
    pos = torch.arange(30)[None]
    mask = attention_mask(pos, pos, W)
    ref = _forward_with_mask(model, seq, mask)
    torch.testing.assert_close(stepped, ref, atol=1e-4, rtol=1e-4)
    assert cache.k.shape[3] == W  # memory stops growing at the window


def _forward_with_mask(model, idx, mask):
    x = model.tok_emb(idx)
    pos = torch.arange(idx.shape[1])[None]
    rope = model._rope(pos, x.dtype)
    from infer_lab.kv_cache import NoCache, Step
    step = Step(pos, mask)  # no memory, this mask: the reference attention
    for block in model.layers:
        x = block(x, rope, NoCache(1, idx.device), step)
    return model.lm_head(model.norm(x))


def test_cache_reports_bytes_and_refuses_overflow():
    model = peaked_model("llama")
    cache = KVCache.for_model(model, 2, 10)
    cfg = model.config
    assert cache.bytes() == 2 * cfg.n_layer * 2 * cfg.n_kv_head * 10 * cfg.head_dim * 4
    prefill(model, [[1, 2, 3, 4]] * 2, cache)
    assert cache.bytes_used() == cache.bytes() * 4 // 10
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.ones(2, 7, dtype=torch.long), cache)


def test_rollback_then_redecode_matches():
    model = peaked_model("llama")
    seq = torch.randint(0, 97, (1, 20))
    cache = KVCache.for_model(model, 1, 32)
    with torch.no_grad():
        model(seq[:, :15], cache)
        cache.rollback(10)
        again = model(seq[:, 10:20], cache)
    torch.testing.assert_close(again, model(seq)[:, 10:20], atol=1e-4, rtol=1e-4)
