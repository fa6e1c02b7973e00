"""NF4, FP8 and GGUF block formats: error bounds, exact sizes, and trusted references
(bitsandbytes for NF4, torch.float8_* casts for FP8, the gguf package for Q8_0/Q4_K)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from infer_lab.quant import blocks, fp8, nf4
from infer_lab.quant.blocks import (
    Q4KLinear,
    Q8_0Linear,
    dequantize_q4_k,
    dequantize_q8_0,
    q4_k_m_assignment,
    quantize_q4_k,
    quantize_q8_0,
)
from infer_lab.quant.fp8 import E4M3, E5M2, FP8Linear
from infer_lab.quant.nf4 import NF4Linear, dequantize_nf4, quantize_nf4

SETTINGS = settings(max_examples=40, deadline=None)


def weights(rows: int, cols: int, bound: float = 1e3):
    """Adversarial float32 weights (repeats, zeros, extremes), shape (rows, cols)."""
    return arrays(np.float32, (rows, cols),
                  elements=st.floats(-bound, bound, width=32, allow_subnormal=False)
                  ).map(torch.from_numpy)


def gaussian(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def make_linear(d_in: int, d_out: int) -> torch.nn.Linear:
    """A linear layer with normal weights (as trained ones roughly are), seeded."""
    lin = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(0.02 * gaussian(d_out, d_in, seed=3))
        lin.bias.copy_(0.02 * gaussian(1, d_out, seed=4)[0])
    return lin


# -- NF4 ----------------------------------------------------------------------------------
def test_nf4_codebook_is_qlora_normal_quantiles():
    # QLoRA's create_normal_map(offset=0.9677): 8 positive and 7 negative N(0,1)
    # quantiles plus an exact zero, scaled to [-1, 1].
    normal = torch.distributions.Normal(0.0, 1.0)
    off = 0.9677083
    pos = normal.icdf(torch.linspace(off, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(off, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    v = v / v.abs().max()
    assert torch.allclose(nf4.nf4_code().double(), v, atol=1e-6)
    assert nf4.nf4_code()[7] == 0 and nf4.nf4_code().numel() == 16


@SETTINGS
@given(weights(4, 128))
def test_nf4_round_trip_error_bound(w):
    t = quantize_nf4(w, blocksize=64)
    code = nf4.nf4_code()
    half_gap = ((code[1:] - code[:-1]).max() / 2).item()  # worst rounding in [-1, 1]
    absmax = w.abs().reshape(4, 2, 64).amax(-1, keepdim=True)  # (4, 2, 1)
    err = (dequantize_nf4(t) - w).abs().reshape(4, 2, 64)
    assert (err <= absmax * half_gap * (1 + 1e-5) + 1e-30).all()
    # Re-quantizing the dequantized weight reproduces the same bytes.
    assert torch.equal(quantize_nf4(dequantize_nf4(t)).packed, t.packed)


def test_nf4_sizes_and_double_quant():
    w = gaussian(256, 1024)  # 4096 blocks of 64 -> 16 second-level groups
    t = quantize_nf4(w)
    assert t.packed.dtype == torch.uint8 and t.packed.shape == (256, 512)
    assert t.bits_per_weight == 4.5 == nf4.nf4_bits_per_weight()
    t2 = quantize_nf4(w, double_quant=True)
    assert t2.absmax is None and t2.absmax_q.dtype == torch.int8
    # 4 + 8/64 + 32/(64*256) plus one fp32 offset for the whole tensor
    assert t2.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / 64 / 256 + 32 / w.numel())
    assert nf4.nf4_bits_per_weight(double_quant=True) == pytest.approx(4.127, abs=1e-3)
    # the second level costs little accuracy: absmax recovered within 1% of its range
    assert torch.allclose(nf4.nf4_absmax(t2), t.absmax, atol=0.01 * t.absmax.max().item())


def test_nf4_matches_bitsandbytes():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    w = gaussian(64, 256, seed=1)
    try:
        q, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        ref = bnbf.dequantize_4bit(q, state)
    except (RuntimeError, NotImplementedError, AssertionError) as exc:  # no CPU backend
        pytest.skip(f"bitsandbytes NF4 does not run on this machine: {exc}")
    assert torch.equal(state.code.float().cpu(), nf4.nf4_code())
    ours = quantize_nf4(w, blocksize=64)
    assert (ref - dequantize_nf4(ours)).abs().max().item() == 0.0
    # Same codes; bitsandbytes keeps the even element in the high nibble.
    bnb_codes = torch.stack([q.flatten() >> 4, q.flatten() & 0xF], -1).flatten()
    ours_codes = torch.stack([ours.packed.flatten() & 0xF, ours.packed.flatten() >> 4],
                             -1).flatten()
    assert torch.equal(bnb_codes, ours_codes)
    # Double quantization: a different second-level code, so close rather than equal.
    q2, s2 = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ref2 = bnbf.dequantize_4bit(q2, s2)
    assert (ref2 - dequantize_nf4(quantize_nf4(w, double_quant=True))).abs().max() < 0.05


def test_nf4_linear():
    lin = make_linear(128, 16)
    qlin = NF4Linear.from_linear(lin)
    x = gaussian(3, 128)
    w_hat = dequantize_nf4(quantize_nf4(lin.weight))
    assert torch.allclose(qlin(x), F.linear(x, w_hat, lin.bias), atol=1e-6)
    assert (qlin(x) - lin(x)).abs().max() < 0.1 * lin(x).abs().max()
    assert qlin.bits_per_weight == 4.5
    dq = NF4Linear.from_linear(lin, double_quant=True)
    assert dq(x).shape == (3, 16) and "packed" in dq.state_dict()


# -- FP8 ----------------------------------------------------------------------------------
TORCH_FP8 = [(E4M3, getattr(torch, "float8_e4m3fn", None)),
             (E5M2, getattr(torch, "float8_e5m2", None))]


@pytest.mark.parametrize("fmt,tdtype", TORCH_FP8, ids=["e4m3", "e5m2"])
def test_fp8_decode_table_matches_torch(fmt, tdtype):
    if tdtype is None:
        pytest.skip("this torch has no float8 dtypes")
    ref = torch.arange(256, dtype=torch.uint8).view(tdtype).float()
    assert torch.allclose(fp8.decode_table(fmt), ref, equal_nan=True)


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=["e4m3", "e5m2"])
def test_fp8_every_value_round_trips(fmt):
    table = fp8.decode_table(fmt)
    finite = torch.isfinite(table)
    codes = torch.arange(256, dtype=torch.uint8)[finite]
    assert torch.equal(fp8.round_to_fp8(table[finite], fmt), table[finite])
    assert torch.equal(fp8.encode_fp8(table[finite], fmt), codes)  # -0.0 keeps its sign
    assert table[finite].max().item() == fmt.max_value


@pytest.mark.parametrize("fmt,tdtype", TORCH_FP8, ids=["e4m3", "e5m2"])
def test_fp8_saturates_at_format_max(fmt, tdtype):
    big = torch.tensor([fmt.max_value, fmt.max_value * 1.03, 1e30, -1e30])
    assert fp8.round_to_fp8(big, fmt).tolist() == [fmt.max_value, fmt.max_value,
                                                   fmt.max_value, -fmt.max_value]
    assert {E4M3.max_value, E5M2.max_value} == {448.0, 57344.0}
    if tdtype is not None:
        assert torch.finfo(tdtype).max == fmt.max_value


@SETTINGS
@given(weights(8, 16, bound=1e5), st.sampled_from(TORCH_FP8))
def test_fp8_rounding_matches_torch_cast(x, fmt_dtype):
    fmt, tdtype = fmt_dtype
    if tdtype is None:
        return
    ours = fp8.round_to_fp8(x, fmt)
    # torch's cast does not saturate (overflow becomes NaN/Inf): clamp first.
    ref = x.clamp(-fmt.max_value, fmt.max_value).to(tdtype).float()
    assert torch.equal(ours, ref)


@SETTINGS
@given(weights(8, 32), st.sampled_from([E4M3, E5M2]))
def test_fp8_quantize_error_bound(w, fmt):
    t = fp8.quantize_fp8(w, fmt)
    err = (t.dequantize() - w).abs()
    # half an ulp relative to |w| for normals, half the smallest step for subnormals
    rel = 2.0 ** -(fmt.man_bits + 1)
    bound = rel * w.abs() + t.scale * fmt.min_subnormal / 2
    assert (err <= bound * (1 + 1e-5) + 1e-30).all()
    assert t.bits_per_weight == fp8.fp8_bits_per_weight(w.numel()) == 8 + 32 / 256


def test_fp8_linear():
    lin = make_linear(64, 8)
    x = gaussian(2, 64)
    for fmt in ("e4m3", "e5m2"):
        qlin = FP8Linear.from_linear(lin, fmt)
        w_hat = fp8.quantize_fp8(lin.weight, fmt).dequantize()
        assert torch.allclose(qlin(x), F.linear(x, w_hat, lin.bias), atol=1e-6)
        assert (qlin(x) - lin(x)).abs().max() < 0.1 * lin(x).abs().max()


# -- GGUF blocks --------------------------------------------------------------------------
def test_block_sizes_are_exact():
    w = gaussian(4, 512)
    b8, b4 = quantize_q8_0(w), quantize_q4_k(w)
    assert b8.dtype == b4.dtype == torch.uint8
    assert b8.shape == (4, 16, 34) and b4.shape == (4, 2, 144)  # bytes per block
    assert blocks.bits_per_weight(b8, w.numel()) == 8.5
    assert blocks.bits_per_weight(b4, w.numel()) == 4.5
    assert Q8_0Linear.from_linear(make_linear(512, 4)).bits_per_weight == 8.5
    assert Q4KLinear.from_linear(make_linear(512, 4)).bits_per_weight == 4.5


@SETTINGS
@given(weights(2, 64))
def test_q8_0_round_trip_error_bound(w):
    b = quantize_q8_0(w)
    d = (w.abs().reshape(2, 2, 32).amax(-1, keepdim=True) / 127)  # (2, 2, 1)
    err = (dequantize_q8_0(b) - w).abs().reshape(2, 2, 32)
    # half a step, plus the fp16 rounding of d (relative for normal fp16, absolute
    # 2^-25 for subnormal fp16) times |q| <= 127
    assert (err <= d * (0.5 + 127 * 2.0 ** -11) + 127 * 2.0 ** -25).all()
    assert torch.equal(quantize_q8_0(dequantize_q8_0(b)), b)  # idempotent


@SETTINGS
@given(weights(1, 256))
def test_q4_k_round_trip_error_bound(w):
    b = quantize_q4_k(w)
    g = w.reshape(8, 32)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1)
    scale, mins = (hi - lo) / 15, -lo  # each sub-block's ideal grid
    d, dmin = scale.max() / 63, mins.max() / 63
    err = (dequantize_q4_k(b) - w).abs().reshape(8, 32)
    # half a step, plus the error of the 6-bit scale (times up to 15 steps) and min;
    # the absolute slack covers fp16 rounding of d and dmin.
    bound = scale / 2 + 15 * d / 2 + dmin / 2 + 2e-3 * (hi - lo) + 1e-4
    assert (err <= bound[:, None]).all()


@SETTINGS
@given(st.lists(st.integers(0, 63), min_size=16, max_size=16),
       arrays(np.uint8, (2, 256), elements=st.integers(0, 15)))
def test_q4_k_pack_unpack_identity(six_bit, codes):
    sc = torch.tensor(six_bit[:8], dtype=torch.uint8)
    m = torch.tensor(six_bit[8:], dtype=torch.uint8)
    packed = blocks.pack_scales_mins(sc, m)
    assert packed.shape == (12,)
    assert all(torch.equal(a, b) for a, b in zip(blocks.unpack_scales_mins(packed), (sc, m)))
    q = torch.from_numpy(codes)
    qs = blocks._pack_q4_k_codes(q)  # (2, 128)
    assert torch.equal(blocks._unpack_q4_k_codes(qs), q)
    # llama.cpp layout: byte l of chunk c = q[64c + l] | q[64c + 32 + l] << 4
    assert qs[0, 32 + 5].item() == q[0, 64 + 5].item() | (q[0, 96 + 5].item() << 4)


def test_blocks_match_gguf_reference():
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as T
    w = gaussian(8, 512, seed=2)
    b8, b4 = quantize_q8_0(w), quantize_q4_k(w)
    ref8 = quants.dequantize(b8.reshape(8, -1).numpy(), T.Q8_0)
    ref4 = quants.dequantize(b4.reshape(8, -1).numpy(), T.Q4_K)
    assert np.array_equal(ref8, dequantize_q8_0(b8).numpy())
    assert np.array_equal(ref4, dequantize_q4_k(b4).numpy())
    # gguf's own Q8_0 quantizer writes the very same bytes
    assert np.array_equal(quants.quantize(w.numpy(), T.Q8_0), b8.reshape(8, -1).numpy())


def test_block_linears_forward():
    lin = make_linear(256, 8)
    x = gaussian(2, 256)
    for cls, deq, q in ((Q8_0Linear, dequantize_q8_0, quantize_q8_0),
                        (Q4KLinear, dequantize_q4_k, quantize_q4_k)):
        qlin = cls.from_linear(lin)
        assert torch.allclose(qlin(x), F.linear(x, deq(q(lin.weight)), lin.bias), atol=1e-6)
        assert (qlin(x) - lin(x)).abs().max() < 0.15 * lin(x).abs().max()


def test_q4_k_m_assignment_follows_llama_cpp_rule():
    n = 16
    names = [f"layers.{i}.{leaf}" for i in range(n)
             for leaf in ("attn.wqkv", "attn.wo", "mlp.w1", "mlp.w2")] + ["lm_head"]
    fmt = q4_k_m_assignment(names, n)
    promoted = sorted({int(k.split(".")[1]) for k, v in fmt.items()
                       if v == "q8_0" and k.endswith("w2")})
    # first and last eighth, and every third layer between (llama.cpp use_more_bits)
    assert promoted == [0, 1, 4, 7, 10, 13, 14, 15]
    assert fmt["lm_head"] == "q8_0"
    assert all(v == "q4_k" for k, v in fmt.items() if k.endswith(("wo", "w1")))
    assert set(fmt.values()) == {"q8_0", "q4_k"}


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("quantize", [
    lambda w: quantize_nf4(w, blocksize=64), quantize_q8_0, quantize_q4_k,
], ids=["nf4", "q8_0", "q4_k"])
def test_bad_block_dimension_raises(quantize):
    with pytest.raises(ValueError, match="divide|multiple"):
        quantize(torch.randn(4, 100))


@pytest.mark.parametrize("quantize", [
    quantize_nf4, quantize_q8_0, quantize_q4_k, fp8.quantize_fp8,
], ids=["nf4", "q8_0", "q4_k", "fp8"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_raise(quantize, bad):
    w = torch.randn(4, 256)
    w[1, 3] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize(w)


def test_fp16_scale_overflow_raises():
    with pytest.raises(ValueError, match="fp16"):
        quantize_q8_0(torch.full((1, 32), 1e7))


def _tie_block() -> torch.Tensor:
    """max|x| = 127, so d = 1 exactly and x / d is x: every .5 below is an exact tie."""
    x = torch.zeros(1, 32)
    x[0, :8] = torch.tensor([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5])
    x[0, 8] = 0.49999997  # just below a tie: floor(|x| + 0.5) would wrongly give 1
    x[0, 9] = -0.49999997
    x[0, 10] = 3.4999998
    return x


def test_q8_0_rounds_ties_away_from_zero_as_llama_cpp():
    b = quantize_q8_0(_tie_block())
    q = b[0, 0, 2:].view(torch.int8)[:11].tolist()
    assert q == [127, 1, -1, 2, -2, 3, -3, 127, 0, 0, 3]  # torch.round would give 0, 2, 126


def test_q8_0_ties_byte_exact_with_gguf():
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as T
    g = torch.Generator().manual_seed(5)
    # Many ties: integer and half-integer codes against a block max of exactly 127.
    w = torch.randint(-254, 255, (16, 256), generator=g).float() / 2
    w[:, ::32] = 127.0
    w = torch.cat([w, _tie_block().repeat(1, 8)])
    ties = ((w.abs() % 1) == 0.5).sum().item()
    assert ties > 1000
    assert np.array_equal(quants.quantize(w.numpy(), T.Q8_0),
                          quantize_q8_0(w).reshape(len(w), -1).numpy())


@SETTINGS
@given(st.floats(-200, 200, width=32))
# Random floats almost never land on a tie: the cases that tell the rules apart, always.
@example(0.5)
@example(-2.5)
@example(126.5)
@example(0.49999997)
@example(-0.49999997)
def test_round_half_away_matches_c_roundf(x):
    # Python's round() is half-to-even; C's roundf (numpy has none) is half-away. The
    # reference: decimal's ROUND_HALF_UP (ties away from zero) on the float's exact value.
    from decimal import ROUND_HALF_UP, Decimal

    want = float(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert blocks.round_half_away(torch.tensor([x])).item() == want
