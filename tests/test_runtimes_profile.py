"""runtimes/profile.py: a decode step's self CPU time by op kind, on eager and packed models.

Small on purpose: code-s, three profiled steps."""

import warnings

import pytest
import torch

import infer_lab
from infer_lab.quant import quantize_model
from infer_lab.runtimes.profile import KINDS, DecodeProfile, op_kind, profile_decode, summarize
from infer_lab.surgery import shared_copy


@pytest.fixture(scope="module")
def code_s():
    model, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    return model, tok.encode("def read_config(path):\n")


def quantized(model, scheme):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(shared_copy(model), scheme).eval()


@pytest.mark.parametrize("name, kind", [
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::linear", "matmul"),
    ("aten::_weight_int8pack_mm", "matmul"), ("aten::_weight_int4pack_mm_for_cpu", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::scaled_dot_product_attention", "attention"), ("aten::_softmax", "attention"),
    ("aten::rsqrt", "norm"), ("aten::layer_norm", "norm"), ("aten::cos", "rope"),
    ("aten::silu", "elementwise"), ("aten::mul", "elementwise"), ("aten::div_", "elementwise"),
    ("aten::copy_", "copy/cast"), ("aten::_to_copy", "copy/cast"), ("aten::cat", "copy/cast"),
    ("aten::view", "view/alloc"), ("aten::empty_strided", "view/alloc"),
    ("aten::embedding", "embedding"), ("aten::argmax", "other"), ("my_op", "other")])
def test_op_kind(name, kind):
    assert op_kind(name) == kind and kind in KINDS


def test_kinds_sum_to_the_total_on_eager_fp32(code_s):
    model, prompt = code_s
    p = profile_decode(model, prompt, steps=2, warmup=1, label="fp32")
    assert isinstance(p, DecodeProfile) and p.label == "fp32" and p.steps == 2
    assert list(p.by_kind)[:len(KINDS)] == list(KINDS)
    assert sum(p.by_kind.values()) == pytest.approx(p.total_ms)
    assert p.total_ms == pytest.approx(sum(o.ms_per_step for o in p.ops))
    assert p.by_kind["matmul"] > 0 and p.by_kind["attention"] > 0 and p.wall_ms > 0
    assert sum(p.share(k) for k in KINDS) == pytest.approx(1.0)
    assert p.ops == sorted(p.ops, key=lambda o: -o.ms_per_step)
    assert all(o.kind == "matmul" for o in p.top("matmul"))
    assert p.dominant() in KINDS and not p.notes


def test_packed_int8_matmul_time_is_the_packed_kernel(code_s):
    model, prompt = code_s
    p = profile_decode(quantized(model, "int8-packed+head"), prompt, steps=2, warmup=1)
    matmuls = {o.name: o for o in p.ops if o.kind == "matmul"}
    assert "aten::_weight_int8pack_mm" in matmuls
    # every linear and the head: the packed kernel is the matmul time (no fp32 mm left)
    assert matmuls["aten::_weight_int8pack_mm"].ms_per_step >= 0.9 * p.by_kind["matmul"]
    assert sum(p.by_kind.values()) == pytest.approx(p.total_ms)


def test_packed_int4_is_matmul_too(code_s):
    model, prompt = code_s
    p = profile_decode(quantized(model, "int4-g64-packed+head"), prompt, steps=1, warmup=1)
    assert any(o.name == "aten::_weight_int4pack_mm_for_cpu" and o.kind == "matmul"
               for o in p.ops)


def test_a_custom_classifier_and_its_unknown_kinds():
    class E:
        def __init__(self, key, us, count):
            self.key, self.self_cpu_time_total, self.count = key, us, count

    events = [E("aten::mm", 3000, 4), E("aten::add", 1000, 2), E("aten::view", 500, 8)]
    p = summarize(events, 2, 3.0, classify=lambda n: "mine" if n == "aten::add" else op_kind(n))
    assert p.by_kind["matmul"] == pytest.approx(1.5) and p.by_kind["mine"] == pytest.approx(0.5)
    assert p.total_ms == pytest.approx(2.25) and p.ops[0].calls_per_step == 2
    assert p.notes == ["'mine' is not one of op_kind's kinds"] and p.dominant() == "matmul"
    with pytest.raises(TypeError, match="returned None for op 'aten::mm'"):
        summarize(events, 1, 1.0, classify=lambda n: None)


def test_bad_input_is_a_clear_error(code_s):
    model, prompt = code_s
    with pytest.raises(TypeError, match="takes an infer_lab Transformer"):
        profile_decode(torch.nn.Linear(2, 2), prompt)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        profile_decode(model, prompt, steps=0)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        profile_decode(model, prompt, warmup=-1)
    with pytest.raises(ValueError, match="non-empty prompt"):
        profile_decode(model, [])
    with pytest.raises(ValueError, match="needs .* positions"):
        profile_decode(model, prompt, steps=model.config.max_seq_len)
