"""Quantization primitives: round-trip error bounds (property tests), packing, sizes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_lab.quant.primitives import (
    bits_per_weight,
    dequantize,
    pack_int2,
    pack_int4,
    quantize,
    unpack_int2,
    unpack_int4,
)

GRANULARITIES = [("tensor", None), ("channel", None), ("group", 4), ("group", 8)]


@st.composite
def weights(draw):
    rows = draw(st.integers(1, 6))
    cols = 8 * draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    log_scale = draw(st.floats(-6, 3))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 10**log_scale
    # Some exact zeros and outliers: the cases where range handling goes wrong.
    if draw(st.booleans()):
        w[0, : cols // 2] = 0.0
    if draw(st.booleans()):
        w[-1, -1] *= 50
    return w


def _expand(scale, w, granularity, group_size):
    """Per-element scale, to state the bound elementwise."""
    rows, cols = w.shape
    if granularity == "tensor":
        return scale.float().expand(rows, cols)
    if granularity == "channel":
        return scale.float().expand(rows, cols)
    return scale.float().repeat_interleave(group_size, dim=1)


@settings(max_examples=60, deadline=None)
@given(w=weights(), bits=st.integers(2, 8), gran=st.sampled_from(GRANULARITIES),
       symmetric=st.booleans())
def test_round_trip_error_within_half_a_step(w, bits, gran, symmetric):
    granularity, group_size = gran
    qt = quantize(w, bits, granularity, group_size, symmetric)
    w_hat = dequantize(qt)
    assert w_hat.shape == w.shape
    step = _expand(qt.scale, w, granularity, group_size)
    # Round to nearest: at most half a step off (plus float rounding of w / s).
    assert ((w_hat - w).abs() <= step / 2 * (1 + 1e-4) + 1e-30).all()
    # Codes stay in range.
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        assert qt.q.dtype == torch.int8 and qt.q.abs().max() <= qmax
    else:
        assert qt.q.dtype == torch.uint8 and qt.q.max() <= 2**bits - 1


@settings(max_examples=30, deadline=None)
@given(w=weights(), bits=st.integers(2, 8), symmetric=st.booleans())
def test_zero_is_exact_and_requantizing_is_idempotent(w, bits, symmetric):
    qt = quantize(w, bits, "channel", None, symmetric)
    w_hat = dequantize(qt)
    assert (w_hat[w == 0] == 0).all()
    # The dequantized weights lie on the grid, so quantizing them again changes nothing.
    again = dequantize(quantize(w_hat, bits, "channel", None, symmetric))
    torch.testing.assert_close(again, w_hat, rtol=1e-5, atol=1e-6 * float(w.abs().max()))


def test_more_bits_and_smaller_groups_mean_less_error():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))
    err = lambda **kw: (dequantize(quantize(w, **kw)) - w).pow(2).mean().item()
    assert err(bits=8) < err(bits=4) < err(bits=2)
    assert err(bits=4, granularity="group", group_size=32) < err(bits=4) \
        < err(bits=4, granularity="tensor")


def test_all_zero_weight_and_fp16_scales():
    z = torch.zeros(3, 8)
    for sym in (True, False):
        assert (dequantize(quantize(z, 4, symmetric=sym)) == 0).all()
    # Tiny weights must not underflow an fp16 scale to 0 (codes would become inf).
    w = torch.full((2, 8), 1e-9)
    qt = quantize(w, 8, scale_dtype=torch.float16)
    assert qt.scale.dtype == torch.float16 and torch.isfinite(dequantize(qt)).all()


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_unsupported_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.randn(4, 8), bits)


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        quantize(torch.randn(4, 10), 4, "group", 4)
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.randn(4, 8), 4, "group", None)
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.randn(4, 8), 4, "channel", 4)
    with pytest.raises(ValueError, match="granularity"):
        quantize(torch.randn(4, 8), 4, "row")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_weights_rejected(bad):
    w = torch.randn(4, 8)
    w[1, 2] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize(w, 8)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=2), n=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_pack_unpack_identity(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    q4 = torch.randint(0, 16, (*shape, 2 * n), generator=g, dtype=torch.uint8)
    p4 = pack_int4(q4)
    assert p4.shape == (*shape, n) and p4.dtype == torch.uint8
    assert torch.equal(unpack_int4(p4), q4)
    q2 = torch.randint(0, 4, (*shape, 4 * n), generator=g, dtype=torch.uint8)
    p2 = pack_int2(q2)
    assert p2.shape == (*shape, n)
    assert torch.equal(unpack_int2(p2), q2)


def test_pack_layout_and_errors():
    # Low nibble holds the even index: [1, 2] -> 0x21.
    assert pack_int4(torch.tensor([1, 2], dtype=torch.uint8)).item() == 0x21
    assert pack_int2(torch.tensor([1, 2, 3, 0], dtype=torch.uint8)).item() == 0b00111001
    with pytest.raises(ValueError, match="multiple of 2"):
        pack_int4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..15"):
        pack_int4(torch.tensor([16, 0], dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..3"):
        pack_int2(torch.tensor([4, 0, 0, 0], dtype=torch.uint8))
    with pytest.raises(TypeError):
        pack_int4(torch.zeros(2, dtype=torch.int64))


def test_bits_per_weight_exact():
    assert bits_per_weight(64, 4, 1, 16) == 4.25
    assert bits_per_weight(128, 4, 1, 16, zero_bits=4) == 4 + 20 / 128
    w = torch.randn(16, 256)
    assert quantize(w, 8).bits_per_weight() == 8 + 16 / 256  # one fp16 scale per row
    assert quantize(w, 4, "group", 64).bits_per_weight() == 4.25
    assert math.isclose(quantize(w, 4, "group", 64, symmetric=False).bits_per_weight(),
                        4 + 20 / 64)
    assert quantize(w, 8, "tensor").bits_per_weight(scale_bits=32) == 8 + 32 / w.numel()
