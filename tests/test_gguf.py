"""GGUF files into our Transformer: a tiny llama written the way llama.cpp's converter
writes one (q/k rows permuted, linears in block types), read back and compared."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.generate import generate
from infer_lab.gguf import load_gguf, read_gguf, unpermute
from infer_lab.model import Transformer

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

CFG = ModelConfig(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=96,
                  max_seq_len=64, rope_theta=50000.0, norm_eps=1e-6, tie_embeddings=False)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: rotate-half rows -> interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).swapaxes(1, 2).reshape(
        w.shape)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(CFG).eval()
    with torch.no_grad():
        m.tok_emb.weight.mul_(20)
    return m


def write_gguf(path, model, linear_type=T.F32, arch="llama", drop=(), kinds=None):
    cfg, sd = model.config, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim

    def put(name, x, kind=T.F32):
        if name in drop:
            return
        kind = (kinds or {}).get(name, kind)
        if kind == T.F32:
            w.add_tensor(name, np.ascontiguousarray(x))
        else:
            qb = gguf.quants.quantize(np.ascontiguousarray(x), kind)
            w.add_tensor(name, qb, raw_shape=qb.shape, raw_dtype=kind)

    put("token_embd.weight", sd["tok_emb.weight"])
    put("output_norm.weight", sd["norm.weight"])
    if not cfg.tie_embeddings:  # a tied file has no output tensor
        put("output.weight", sd["lm_head.weight"], linear_type)
    for i in range(cfg.n_layer):
        o, g = f"layers.{i}.", f"blk.{i}."
        qkv = sd[o + "attn.wqkv.weight"]
        put(g + "attn_q.weight", permute(qkv[:q_dim], cfg.n_head), linear_type)
        put(g + "attn_k.weight", permute(qkv[q_dim:q_dim + kv_dim], cfg.n_kv_head), linear_type)
        put(g + "attn_v.weight", qkv[q_dim + kv_dim:], linear_type)
        put(g + "attn_output.weight", sd[o + "attn.wo.weight"], linear_type)
        put(g + "attn_norm.weight", sd[o + "attn_norm.weight"])
        put(g + "ffn_norm.weight", sd[o + "mlp_norm.weight"])
        put(g + "ffn_gate.weight", sd[o + "mlp.w1.weight"], linear_type)
        put(g + "ffn_up.weight", sd[o + "mlp.w3.weight"], linear_type)
        put(g + "ffn_down.weight", sd[o + "mlp.w2.weight"], linear_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unpermute_inverts_the_converter():
    w = torch.randn(4 * 16, 8)
    assert torch.equal(unpermute(torch.from_numpy(permute(w.numpy(), 4)), 4), w)


def test_f32_file_gives_the_same_logits_and_tokens(model, tmp_path):
    loaded = load_gguf(write_gguf(tmp_path / "m.gguf", model))
    # GGUF stores floats as float32: eps 1e-6 comes back as 9.99999997e-07
    assert replace(loaded.config, norm_eps=CFG.norm_eps) == model.config
    assert loaded.config.norm_eps == pytest.approx(CFG.norm_eps, rel=1e-6)
    x = torch.randint(0, CFG.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    assert generate(loaded, [[1, 2, 3]], 24) == generate(model, [[1, 2, 3]], 24)


@pytest.mark.parametrize("kind", [T.Q8_0, T.Q4_1, T.Q4_0, T.Q5_0])
def test_block_typed_linears_equal_their_dequantized_weights(model, tmp_path, kind):
    """Logits of the loaded file = logits of the model with each linear replaced by the
    gguf package's own decoding of the same blocks (our decoder, our unpermute)."""
    f = read_gguf(write_gguf(tmp_path / "q.gguf", model, kind))
    assert f.tensors["blk.0.ffn_up.weight"].kind == kind.name
    loaded = load_gguf(tmp_path / "q.gguf")
    ref = Transformer(CFG).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for name, v in sd.items():
        if v.dim() == 2 and name != "tok_emb.weight":
            rt = gguf.quants.dequantize(gguf.quants.quantize(v.numpy(), kind), kind)
            v.copy_(torch.from_numpy(rt))
    ref.load_state_dict(sd)
    x = torch.randint(0, CFG.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), atol=1e-4, rtol=1e-4)


MIXED = {"blk.0.attn_v.weight": T.Q8_0, "blk.1.attn_q.weight": T.Q4_0,
         "blk.1.ffn_down.weight": T.Q5_0, "token_embd.weight": T.Q8_0}


@pytest.mark.parametrize("kind,kinds", [(T.Q4_1, None), (T.Q8_0, None), (T.Q4_1, MIXED)],
                         ids=["q4_1", "q8_0", "mixed"])
def test_kept_quantized_equals_dequantized_at_the_file_size(model, tmp_path, kind, kinds):
    """keep_quantized decodes the same blocks per call: the same logits and tokens as the
    dequantized load, while the model holds exactly the file's tensor bytes."""
    from infer_lab.metrics import weight_bytes
    from infer_lab.quant.gguf_linear import GGUFEmbedding, GGUFLinear

    path = write_gguf(tmp_path / "k.gguf", model, kind, kinds=kinds)
    ref, kept = load_gguf(path), load_gguf(path, keep_quantized=True)
    assert isinstance(kept.layers[1].attn.wqkv, GGUFLinear)
    assert isinstance(kept.tok_emb, GGUFEmbedding)
    if kinds:  # one fused projection over rows of two block types
        assert kept.layers[1].attn.wqkv.kinds == ("Q4_0", kind.name, kind.name)
    x = torch.randint(0, CFG.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(kept(x), ref(x), atol=1e-5, rtol=1e-5)
    assert generate(kept, [[5, 6, 7]], 16) == generate(ref, [[5, 6, 7]], 16)
    stored = sum(t.data.numel() * t.data.element_size() for t in read_gguf(path).tensors.values())
    assert weight_bytes(kept) == stored
    assert weight_bytes(kept) < weight_bytes(ref) / (2 if kind == T.Q8_0 else 3)


def test_kept_quantized_ties_the_head_to_the_embedding_and_runs_in_bf16(tmp_path):
    from infer_lab.metrics import weight_bytes
    from infer_lab.quant import quantize_model

    torch.manual_seed(1)
    tied = Transformer(replace(CFG, tie_embeddings=True)).eval()
    path = write_gguf(tmp_path / "tied.gguf", tied, T.Q8_0, kinds={"token_embd.weight": T.Q8_0})
    kept = load_gguf(path, keep_quantized=True)
    assert kept.config.tie_embeddings
    assert kept.lm_head.blocks_0.data_ptr() == kept.tok_emb.blocks.data_ptr()  # stored once
    stored = sum(t.data.numel() * t.data.element_size() for t in read_gguf(path).tensors.values())
    assert weight_bytes(kept) == stored
    half = load_gguf(path, dtype=torch.bfloat16, keep_quantized=True)
    assert half.dtype == torch.bfloat16
    x = torch.randint(0, CFG.vocab_size, (1, 8))
    with torch.no_grad():
        assert half(x).dtype == torch.bfloat16
        torch.testing.assert_close(half(x).float(), kept(x), atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="already"):
        quantize_model(kept, "int8")
    with pytest.raises(IndexError, match="token ids must lie in 0..95"):
        kept(torch.tensor([[96]]))


def test_bad_files_get_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported; supported: llama"):
        load_gguf(write_gguf(tmp_path / "a.gguf", model, arch="gpt2"))
    with pytest.raises(ValueError, match="lacks tensor 'blk.1.ffn_up.weight'"):
        load_gguf(write_gguf(tmp_path / "b.gguf", model, drop={"blk.1.ffn_up.weight"}))
    good = (tmp_path / "c.gguf")
    write_gguf(good, model)
    raw = good.read_bytes()
    (tmp_path / "t.gguf").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_gguf(tmp_path / "t.gguf")
    (tmp_path / "n.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(tmp_path / "n.gguf")
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


def test_unsupported_tokenizers_and_block_types_say_what_is_supported(model, tmp_path):
    from infer_lab.gguf import load_gguf_with_tokenizer
    from infer_lab.gguf_tokenizer import tokenizer_from_metadata

    path = write_gguf(tmp_path / "m.gguf", model)  # a model without tokenizer metadata
    with pytest.raises(ValueError, match="no tokenizer in its metadata"):
        load_gguf_with_tokenizer(path)
    tokens = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": []}
    with pytest.raises(ValueError, match="tokenizer model 'llama' is not supported; "
                                         "supported: gpt2"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "llama", **tokens})  # sentencepiece
    with pytest.raises(ValueError, match="pre-tokenizer 'qwen2' is not supported; supported:"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                                 **tokens})
    # Q5_1 is a real GGUF type that we do not decode: both load paths name what we do
    odd = write_gguf(tmp_path / "q51.gguf", model, kinds={"blk.0.ffn_up.weight": T.Q5_1})
    for keep in (False, True):
        with pytest.raises(ValueError, match="type Q5_1 is not supported; supported: F32"):
            load_gguf(odd, keep_quantized=keep)
