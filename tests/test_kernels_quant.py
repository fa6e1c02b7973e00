"""Weight-only int8 / int4 GEMV kernels against dequantize-then-F.linear.

Under Triton's interpreter on a CPU (tests/conftest.py sets TRITON_INTERPRET=1), on a GPU
compiled. ``validate()`` must pass for both widths, and must *fail* on a planted bug:

* int4 that swaps the nibble order (code 2j read from the high nibble): caught on every
  non-empty case, since the two codes of a byte differ and meet different x[2j], x[2j+1];
* int8 that forgets the per-channel scale: caught on every non-empty case (outputs come
  out 1/scale, about 100x, too large).

The empty batch (M = 0) passes under both bugs: nothing to get wrong there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infer_lab.kernels import quant_gemv as qg
from infer_lab.kernels import runtime
from infer_lab.kernels.runtime import tl
from infer_lab.quant.int4 import Int4Linear
from infer_lab.quant.int8 import Int8Linear

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or runtime.interpreting()),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# -- planted bugs: the real kernels with one line wrong -----------------------------------
@triton.jit
def _int8_no_scale(X, W, S, Z, BIAS, Y, M, N, K, sxm, swn, ssn, szn, sym,
                   HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    z = 0.0
    if HAS_ZERO:
        z = tl.load(Z + offs_n * szn, mask=n_ok, other=0).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(X + offs_m[:, None] * sxm + offs_k[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        q = tl.load(W + offs_n[:, None] * swn + offs_k[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0).to(tl.float32)
        if HAS_ZERO:
            q = q - z[:, None]
        acc += tl.sum(x[:, None, :] * q[None, :, :], 2)
    y = acc  # BUG: the codes are never multiplied by the channel's scale
    if HAS_BIAS:
        y += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _int4_swapped_nibbles(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
                          HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        j_ok = offs_j < K // 2
        w_mask = n_ok[:, None] & j_ok[None, :]
        packed = tl.load(W + offs_n[:, None] * swn + offs_j[None, :], mask=w_mask, other=0)
        lo = (packed >> 4).to(tl.float32)  # BUG: code 2j is the LOW nibble, not the high
        hi = (packed & 0xF).to(tl.float32)
        grp = offs_n[:, None] * ssn + ((2 * offs_j) // G)[None, :] * ssg
        s = tl.load(S + grp, mask=w_mask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(Z + offs_n[:, None] * szn + ((2 * offs_j) // G)[None, :] * szg,
                        mask=w_mask, other=0).to(tl.float32)
        else:
            z = 8.0
        x_mask = m_ok[:, None] & j_ok[None, :]
        x_lo = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :], mask=x_mask,
                       other=0.0).to(tl.float32)
        x_hi = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :] + 1, mask=x_mask,
                       other=0.0).to(tl.float32)
        acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2)
        acc += tl.sum(x_hi[:, None, :] * ((hi - z) * s)[None, :, :], 2)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _failed(report) -> set[str]:
    return {c.name for c in report.failures}


@pytest.mark.parametrize("bits", [8, 4])
def test_validate_passes(bits):
    report = qg.validate(bits=bits)
    assert report.passed, str(report)


def test_int8_catches_forgotten_scale():
    report = qg.validate(_int8_no_scale, bits=8)
    assert report.passed is False
    assert _failed(report) == {c.name for c in qg.cases(8) if c.args[0].numel()}, str(report)


def test_int4_catches_swapped_nibbles():
    report = qg.validate(_int4_swapped_nibbles, bits=4)
    assert report.passed is False
    assert _failed(report) == {c.name for c in qg.cases(4) if c.args[0].numel()}, str(report)


@pytest.mark.parametrize("cls, linear", [(Int8Linear, qg.int8_linear),
                                         (Int4Linear, qg.int4_linear)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_layer_conveniences_equal_the_layers_forward(cls, linear, symmetric):
    """int8_linear / int4_linear on a real layer and a (B, T, K) input, as in the model."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24)
    gran, group = ("channel", None) if cls is Int8Linear else ("group", 16)
    layer = cls.from_linear(lin, gran, group, symmetric).to(DEVICE)
    x = torch.randn(2, 3, 64, device=DEVICE)
    want = F.linear(x, layer.dequantized_weight(x.dtype), layer.bias)
    torch.testing.assert_close(linear(x, layer), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(want, layer(x))


def test_bad_input():
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 8), "group", 16)
    with pytest.raises(ValueError, match="one scale per channel"):
        qg.int8_linear(torch.randn(1, 32), layer)
    with pytest.raises(ValueError, match="uint8 with a zero point"):
        qg.int8_gemv_triton(torch.randn(1, 32), layer.qweight.to(torch.uint8), layer.scale)
    layer4 = Int4Linear.from_linear(torch.nn.Linear(36, 8), "group", 6)
    with pytest.raises(ValueError, match="x must be a float tensor"):
        qg.int4_linear(torch.randn(1, 35), layer4)
    with pytest.raises(ValueError, match="bfloat16"):
        qg.int4_linear(torch.randn(1, 36, dtype=torch.bfloat16), layer4)
    odd = Int4Linear.from_linear(torch.nn.Linear(6, 4), "group", 3)
    with pytest.raises(ValueError, match="group_size must be even"):
        qg.int4_linear(torch.randn(1, 6), odd)


def test_dispatcher_falls_back_without_interpreter(monkeypatch):
    layer = Int4Linear.from_linear(torch.nn.Linear(64, 8))

    def boom(*a, **k):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(qg, "int4_gemv_triton", boom)
    x = torch.randn(1, 64)
    if not torch.cuda.is_available():
        monkeypatch.setattr(runtime, "interpreting", lambda: False)
        torch.testing.assert_close(qg.int4_linear(x, layer), layer(x))
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    with pytest.raises(AssertionError, match="the kernel ran"):
        qg.int4_linear(x, layer)
