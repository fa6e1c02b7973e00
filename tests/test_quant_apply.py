"""Quantized linear layers and the module swap: equivalence with dequantized weights,
mixed precision overrides, tied embeddings, clear errors, sensitivity scan."""

import copy

import pytest
import torch
from torch import nn

from infer_lab.config import ModelConfig
from infer_lab.metrics import weight_bytes
from infer_lab.model import Transformer
from infer_lab.quant import (
    SCHEMES,
    Int4Linear,
    Int8Linear,
    Scheme,
    is_quantized,
    quantize,
    quantize_model,
    sensitivity_scan,
)


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=64, **kw)).eval()


def _dequantized_copy(qmodel: nn.Module) -> nn.Module:
    """The same model with every quantized layer replaced by nn.Linear(dequantized W)."""
    ref = copy.deepcopy(qmodel)
    for name, m in list(ref.named_modules()):
        if getattr(m, "is_quantized", False):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = m.dequantized_weight()
            if m.bias is not None:
                lin.bias.data = m.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, lin)
    return ref


@pytest.mark.parametrize("cls,kw", [
    (Int8Linear, {"granularity": "channel"}),
    (Int8Linear, {"granularity": "tensor"}),
    (Int8Linear, {"granularity": "group", "group_size": 16, "symmetric": False}),
    (Int4Linear, {"granularity": "group", "group_size": 16}),
    (Int4Linear, {"granularity": "group", "group_size": 32, "symmetric": False}),
    (Int4Linear, {"granularity": "channel"}),
])
def test_layer_matches_primitives_and_dequantized_forward(cls, kw):
    torch.manual_seed(1)
    lin = nn.Linear(64, 48, bias=True)
    q = cls.from_linear(lin, scale_dtype=torch.float32, **kw)
    qt = quantize(lin.weight, cls.bits, kw["granularity"], kw.get("group_size"),
                  kw.get("symmetric", True))
    torch.testing.assert_close(q.dequantized_weight(), qt.dequantize(), rtol=0, atol=0)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(q(x), x @ q.dequantized_weight().T + lin.bias)
    # ... and it is close to the original layer.
    tol = 0.02 if cls is Int8Linear else 0.3
    assert (q(x) - lin(x)).abs().max() < tol * lin(x).abs().max()


def test_int4_is_packed_and_state_dict_round_trips():
    lin = nn.Linear(128, 32, bias=False)
    q = Int4Linear.from_linear(lin, group_size=64)
    assert q.qweight.shape == (32, 64) and q.qweight.dtype == torch.uint8
    assert q.scale.shape == (32, 2) and q.scale.dtype == torch.float16
    assert weight_bytes(q) == 32 * 64 + 32 * 2 * 2  # exactly 4.25 bits per weight
    fresh = Int4Linear(128, 32, bias=False, group_size=64)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.dequantized_weight(), q.dequantized_weight())


@pytest.mark.parametrize("scheme", ["int8", "int4-g64", "int4-g32", "int4-g64-asym"])
def test_quantized_model_forward_equals_dequantized_forward(scheme):
    model = tiny()
    x = torch.randint(0, 97, (2, 12))
    ref_logits = model(x)
    q = quantize_model(copy.deepcopy(model), scheme)
    assert is_quantized(q) and not is_quantized(model)
    with torch.no_grad():
        torch.testing.assert_close(q(x), _dequantized_copy(q)(x), rtol=1e-5, atol=1e-5)
        # Quantization changes the output a little, not a lot.
        rel = (q(x) - ref_logits).norm() / ref_logits.norm()
    assert rel < (0.02 if scheme == "int8" else 0.3)


def test_tied_lm_head_is_skipped_by_default_and_model_gets_smaller():
    model = tiny()
    before = weight_bytes(model)
    q = quantize_model(copy.deepcopy(model), "int8")
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.tok_emb.weight
    n_quantized = sum(isinstance(m, Int8Linear) for m in q.modules())
    assert n_quantized == 2 * 5  # wqkv, wo, w1, w2, w3 per block
    assert weight_bytes(q) < before
    with pytest.raises(ValueError, match="tied"):
        quantize_model(copy.deepcopy(model), Scheme(bits=8, skip=()))
    # An untied lm_head can be quantized when the scheme asks for it.
    untied = quantize_model(tiny(tie_embeddings=False), Scheme(bits=8, skip=()))
    assert isinstance(untied.lm_head, Int8Linear)


def test_overrides_give_mixed_precision():
    scheme = Scheme(bits=4, group_size=32, overrides={
        "layers.0.*": None,  # keep the first block in full precision
        "*.mlp.w2": Scheme(bits=8),  # down projections in int8
    })
    q = quantize_model(tiny(), scheme)
    assert type(q.layers[0].attn.wqkv) is nn.Linear
    assert type(q.layers[0].mlp.w2) is nn.Linear  # first matching pattern wins
    assert isinstance(q.layers[1].attn.wqkv, Int4Linear)
    assert isinstance(q.layers[1].mlp.w2, Int8Linear)
    assert str(SCHEMES["int4-g64"]) == "int4-g64"


def test_errors_are_clear():
    model = quantize_model(tiny(), "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, "int8")
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(tiny(), Scheme(bits=4, group_size=48))  # d_model 64
    with pytest.raises(ValueError, match="bits"):
        Scheme(bits=3)
    with pytest.raises(ValueError, match="unknown scheme"):
        quantize_model(tiny(), "int3")
    bad = tiny()
    bad.layers[1].mlp.w1.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_model(bad, "int8")
    # Validation happens before any swap: a failed call leaves the model untouched.
    assert not is_quantized(bad)


class _CharTok:
    eos_id = 0

    def encode(self, text):
        return [1 + ord(c) % 96 for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_sensitivity_scan_restores_model_and_ranks_layers():
    model = tiny()
    x = torch.randint(0, 97, (1, 8))
    before = model(x)
    rep = sensitivity_scan(model, _CharTok(), "def f(x):\n    return x\n" * 8,
                           Scheme(bits=4, granularity="tensor"), max_tokens=128,
                           seq_len=64, progress=False)
    assert not is_quantized(model)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert len(rep.ppl) == 10 and "lm_head" not in rep.ppl
    deltas = list(rep.delta().values())
    assert deltas == sorted(deltas, reverse=True)
    mixed = rep.keep_in_full_precision(SCHEMES["int4-g32"], k=2)
    q = quantize_model(copy.deepcopy(model), mixed)
    for name in rep.most_sensitive(2):
        assert type(q.get_submodule(name)) is nn.Linear


def test_every_catalog_method_leaves_the_fp_model_untouched(tiny):
    """The catalog builds quantized copies that share the fp model's tensors (no second
    copy of a large model): none of them may write to a shared tensor."""
    from infer_lab.quant.catalog import METHOD_NAMES, Unavailable, build

    torch.manual_seed(0)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    ctx = {"calib_ids": torch.randint(0, tiny.config.vocab_size, (2, 16)), "group_size": 32,
           "options": {"grid": 2, "n_sample": 16}}
    built = 0
    for name in [n for n in METHOD_NAMES if n != "fp32"]:  # fp32 is the model itself
        try:
            q = build(tiny, name, ctx)
        except Unavailable:
            continue
        built += 1
        assert q is not tiny
        with torch.no_grad():
            q(torch.tensor([[1, 2, 3]]))
        for k, v in tiny.state_dict().items():
            assert torch.equal(v, before[k]), f"{name} changed the fp model's {k}"
    assert built >= 12
