"""Packed weight-only layers (infer_lab/quant/packed.py): the same math as the unfused
Int8Linear / Int4Linear on the same codes, fallbacks that keep the unfused answer and say
why, the tied embedding reading the head's codes, and a whole model's perplexity and
greedy tokens against the unfused scheme."""

import copy
import warnings

import pytest
import torch
from torch import nn

import infer_lab
from infer_lab.generate import GREEDY, generate
from infer_lab.metrics import weight_bytes
from infer_lab.quality import heldout_ids, perplexity
from infer_lab.quant import (
    Int4Linear,
    Int8Linear,
    PackedFallback,
    PackedInt4Linear,
    PackedInt8Linear,
    QuantizedEmbedding,
    Scheme,
    quantize_model,
)
from infer_lab.quant.apply import quantize_embedding
from infer_lab.surgery import shared_copy

BF16_TOL = 2 ** -7  # bf16 product: x and the output rounded to bf16 (2^-9 each), fp32 sums


def _linear(k: int, n: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    if bias:
        nn.init.normal_(lin.bias)
    return lin


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err <= rel, f"relative error {err:.2e} > {rel:.0e}"


def _bf16_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unfused layer's weights on bf16-rounded activations: what the bf16 product sees."""
    return layer(x.bfloat16().float())


SHAPES = [  # (x shape, K, N, bias)
    ((1, 64), 64, 48, False),  # one token, N padded to 64 inside
    ((3, 128), 128, 256, True),  # a batch of rows, bias
    ((2, 5, 256), 256, 80, True),  # 3-D input (B, T, K), N not a multiple of 64
    ((4, 192), 192, 50, False),  # N neither a multiple of 16 nor even
]


@pytest.mark.parametrize("shape,k,n,bias", SHAPES)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_int8_matches_unfused(shape, k, n, bias, granularity):
    ref = Int8Linear.from_linear(_linear(k, n, bias), granularity)
    x = torch.randn(shape)
    exact = PackedInt8Linear.from_layer(ref, compute_dtype=None)  # fp32 kernel: same math
    assert isinstance(exact, PackedInt8Linear)
    with torch.inference_mode():
        _close(exact(x), ref(x), 1e-5)
        fast = PackedInt8Linear.from_layer(ref)  # bf16 product, fp32 scales and output
        _close(fast(x), _bf16_reference(ref, x), BF16_TOL)
        _close(fast(x.bfloat16()), ref(x.bfloat16().float()).bfloat16(), 2 * BF16_TOL)
    assert torch.equal(exact.dequantized_weight(), ref.dequantized_weight())


@pytest.mark.parametrize("shape,k,n,bias", SHAPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_matches_unfused(shape, k, n, bias, symmetric):
    ref = Int4Linear.from_linear(_linear(k, n, bias), "group", 32, symmetric)
    x = torch.randn(shape)
    exact = PackedInt4Linear.from_layer(ref, compute_dtype=None)
    assert isinstance(exact, PackedInt4Linear)
    # zero = (8 - z) s makes the kernel's weights bit-identical to ours in fp32
    assert exact.rows_readable
    assert torch.equal(exact.dequantized_weight(), ref.dequantized_weight())
    with torch.inference_mode():
        _close(exact(x), ref(x), 1e-5)
        _close(PackedInt4Linear.from_layer(ref)(x), _bf16_reference(ref, x), BF16_TOL)


@pytest.mark.parametrize("granularity,group,kernel_group", [
    ("group", 64, 64), ("group", 128, 128), ("group", 256, 256),
    ("group", 512, 256), ("group", 96, 32),  # coarser groups tiled by the kernel's
    ("channel", None, 256), ("tensor", None, 256)])
def test_int4_groups_reexpressed_exactly(granularity, group, kernel_group):
    ref = Int4Linear.from_linear(_linear(1536, 64, True), granularity, group, False)
    packed = PackedInt4Linear.from_layer(ref, compute_dtype=None)
    assert packed.group_size == kernel_group
    x = torch.randn(2, 1536)
    with torch.inference_mode():
        _close(packed(x), ref(x), 1e-5)


def _falls_back(make, match: str) -> nn.Module:
    with pytest.warns(PackedFallback, match=match):
        return make()


@pytest.mark.parametrize("make_ref,pack,match", [
    (lambda: Int4Linear.from_linear(_linear(64, 32, True), "group", 16),
     PackedInt4Linear.from_layer, "groups of 16"),
    (lambda: Int4Linear.from_linear(_linear(96, 32, True), "group", 48),
     PackedInt4Linear.from_layer, "groups of 48"),
    (lambda: Int8Linear.from_linear(_linear(64, 32, True), "channel", symmetric=False),
     PackedInt8Linear.from_layer, "asymmetric"),
    (lambda: Int8Linear.from_linear(_linear(64, 32, True), "group", 32),
     PackedInt8Linear.from_layer, "groups of 32"),
    (lambda: Int8Linear.from_linear(_linear(40, 32, True)),
     PackedInt8Linear.from_layer, "K=40 is not a multiple of 16"),
])
def test_fallbacks_keep_the_unfused_answer_and_say_why(make_ref, pack, match):
    ref = make_ref()
    kept = _falls_back(lambda: pack(ref), match)
    assert kept is ref  # the unfused layer itself: its answer, by construction


def test_fallbacks_per_call_and_device():
    ref = Int8Linear.from_linear(_linear(40, 32, True))
    exact = PackedInt8Linear.from_layer(ref, compute_dtype=None)  # fp32 kernel takes K=40
    x = torch.randn(3, 40)
    with torch.inference_mode():
        # bf16 activations with K % 16: computed through the fp32 kernel, not the bf16 one
        _close(exact(x.bfloat16()), ref(x.bfloat16().float()).bfloat16(), 2 * BF16_TOL)
        with pytest.raises(TypeError, match="fp32, bf16 or fp16"):
            exact(x.double())
    with pytest.raises(RuntimeError, match="cannot move off the CPU"):
        exact.to("meta")
    on_meta = Int4Linear(64, 32).to("meta")
    assert _falls_back(lambda: PackedInt4Linear.from_layer(on_meta), "on meta") is on_meta


def test_quantize_model_warns_once_for_kept_layers():
    model, _ = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_model(shared_copy(model), Scheme(bits=4, group_size=16, packed=True))
    fallbacks = [w for w in caught if issubclass(w.category, PackedFallback)]
    assert len(fallbacks) == 1 and "10 layer(s) kept unfused" in str(fallbacks[0].message)
    assert all(type(m) is Int4Linear for n, m in q.named_modules() if n.endswith("w1"))


def _tied_model():
    model, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    return model.eval(), tok


@pytest.mark.parametrize("scheme", ["int8-packed+head", "int4-g64-packed+head"])
def test_tied_embedding_reads_the_heads_codes(scheme):
    model, _ = _tied_model()
    q = quantize_model(shared_copy(model), scheme)
    assert isinstance(q.tok_emb, QuantizedEmbedding) and q.tok_emb.source is q.lm_head
    assert not any(k.startswith("tok_emb.") for k in q.state_dict())  # codes stored once
    ids = torch.tensor([[0, 5, 4095, 17]])
    w = q.lm_head.dequantized_weight()  # (V, C): what the head multiplies by
    assert torch.equal(q.tok_emb(ids), w[ids])
    assert weight_bytes(q) < weight_bytes(quantize_model(shared_copy(model), scheme[:-5]))
    with pytest.raises(IndexError):
        q.tok_emb(torch.tensor([[4096]]))
    moved = copy.deepcopy(q).to(torch.bfloat16)  # the lookup follows the model's dtype
    assert moved.tok_emb(ids).dtype == torch.bfloat16 and moved.tok_emb.source is moved.lm_head


def test_embedding_keeps_own_codes_when_layout_unreadable():
    model, _ = _tied_model()
    head = PackedInt4Linear.from_linear(model.lm_head)
    head.rows_readable = False  # as on a CPU whose int4 layout we do not decode
    with pytest.warns(PackedFallback, match="own copy"):
        emb = quantize_embedding(model.tok_emb, Scheme(bits=4, group_size=64), head)
    assert not emb.tied and isinstance(emb.source, Int4Linear)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(emb(ids), emb.source.dequantized_weight()[ids])


def test_tied_head_needs_its_embedding():
    model, _ = _tied_model()
    with pytest.raises(ValueError, match="tied"):
        quantize_model(shared_copy(model), Scheme(bits=8, skip=(), packed=True))
    with pytest.raises(ValueError, match="tied"):  # head quantized, embedding excluded
        quantize_model(shared_copy(model), Scheme(bits=8, skip=("tok_emb",), embeddings=True))
    kept = quantize_model(shared_copy(model), Scheme(bits=8, embeddings=True))  # skips head
    assert type(kept.tok_emb) is nn.Embedding and kept.lm_head.weight is kept.tok_emb.weight


@pytest.mark.parametrize("unfused,packed", [("int8", "int8-packed"),
                                            ("int4-g64", "int4-g64-packed"),
                                            ("int8+head", "int8-packed+head"),
                                            ("int4-g64+head", "int4-g64-packed+head")])
def test_model_perplexity_and_greedy_tokens_match_unfused(unfused, packed):
    model, tok = _tied_model()
    ids = heldout_ids(tok, 1024)
    prompt = tok.encode("def fibonacci(n):\n    ")
    out = {}
    for name in (unfused, packed):
        q = quantize_model(shared_copy(model), name)
        with torch.inference_mode():
            ppl = perplexity(q, ids, seq_len=256, progress=False).ppl
            tokens = generate(q, [prompt], 24, GREEDY, eos_id=None)[0]
        out[name] = ppl, tokens
    (p_ref, t_ref), (p, t) = out[unfused], out[packed]
    assert abs(p / p_ref - 1) < 1e-3, (p, p_ref)
    assert t == t_ref


def test_int4_body_with_int8_table():
    model, _ = _tied_model()
    q = quantize_model(shared_copy(model), "int4-g64-packed+int8-head")
    assert isinstance(q.lm_head, PackedInt8Linear) and q.tok_emb.source is q.lm_head
    assert isinstance(q.layers[0].mlp.w1, PackedInt4Linear)
