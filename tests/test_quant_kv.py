"""Quantized KV caches: close to the full-precision cache, and smaller."""

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import decode_steps, generate
from infer_lab.kv_cache import KVCache
from infer_lab.model import Transformer
from infer_lab.quant.kv import QuantizedKVCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                                max_seq_len=256)).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(10)
    return m


def _stepped_logits(model, seq, cache):
    with torch.no_grad():
        out = [model(seq[:, :20], cache)]
        for t in range(20, seq.shape[1]):
            out.append(model(seq[:, t:t + 1], cache))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("bits, tol", [(8, 0.02), (4, 0.25)])
def test_quantized_cache_logits_close_to_full_precision(model, bits, tol):
    seq = torch.randint(0, 97, (2, 90))
    ref = model(seq)
    cache = QuantizedKVCache.for_model(model, 2, 128, bits=bits, group=16)
    out = _stepped_logits(model, seq, cache)
    rel = (out - ref).abs().max() / ref.abs().max()
    assert rel < tol, float(rel)
    if bits == 8:
        assert generate(model, [[1, 2, 3]], 40)[0] == _greedy_with(model, [1, 2, 3], 40, cache=
                                                                QuantizedKVCache.for_model(
                                                                    model, 1, 64, bits=8))


def _greedy_with(model, prompt, n, cache):
    return [int(t) for t in decode_steps(model, [prompt], n, cache=cache)]


def test_int8_error_is_within_half_a_step(model):
    cache = QuantizedKVCache.for_model(model, 1, 8, bits=8)
    k = torch.randn(1, 2, 3, 16)  # (B, n_kv_head, T, head_dim)
    step = cache.begin(3, torch.arange(3)[None])
    k_back, _ = cache.update(0, k, k, step)
    step = k.abs().amax(-1, keepdim=True) / 127
    assert ((k_back - k).abs() <= step / 2 + 1e-3 * step).all()


def test_kivi_per_channel_keys_beat_per_token_on_outlier_channels(model):
    torch.manual_seed(0)
    k = torch.randn(1, 2, 32, 16)
    k[..., 5] *= 30  # a key outlier channel, as KIVI observes in real models
    cache = QuantizedKVCache.for_model(model, 1, 64, bits=4, group=32)
    step = cache.begin(32, torch.arange(32)[None])
    k_kivi, _ = cache.update(0, k, k, step)
    per_token = QuantizedKVCache.for_model(model, 1, 64, bits=4)
    q, s = per_token._encode(k, -1)
    k_tok = per_token._decode(q, s)
    normal = torch.arange(16) != 5
    # Per-token scales are set by the outlier and crush every other channel to ~0;
    # per-channel scales keep the normal channels' resolution.
    err_kivi = (k_kivi - k)[..., normal].pow(2).mean()
    err_tok = (k_tok - k)[..., normal].pow(2).mean()
    assert err_kivi < err_tok / 10


def test_quantized_caches_are_smaller(model):
    full = KVCache.for_model(model, 4, 256).bytes()
    int8 = QuantizedKVCache.for_model(model, 4, 256, bits=8).bytes()
    int4 = QuantizedKVCache.for_model(model, 4, 256, bits=4, group=32).bytes()
    assert int4 < int8 < full / 3  # fp32 -> int8 + an fp16 scale per 16-dim vector


def test_bad_settings_raise(model):
    with pytest.raises(ValueError, match="bits"):
        QuantizedKVCache.for_model(model, 1, 8, bits=3)
    with pytest.raises(ValueError, match="window"):
        QuantizedKVCache.for_model(model, 1, 8, window=4)
