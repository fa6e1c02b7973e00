"""Weight-only int8 / int4 GEMV: dequantize in registers, multiply, never store W in fp.

Decoding a token reads every weight once, so at batch 1 its speed is bytes of weights /
memory bandwidth. Quantized layers (:mod:`infer_lab.quant`) store codes q and scales s
with W ~ s * (q - z); their reference forward dequantizes all of W into a fp tensor and
calls F.linear, which reads the codes, writes W in fp and reads it again. A fused kernel
loads the codes (1 or 1/2 byte per weight) and dequantizes them in registers, as
gpt-fast's int8/int4 paths and the Marlin/ExLlama kernels do:

    y[m, n] = sum_k x[m, k] * s[n, g(k)] * (q[n, k] - z[n, g(k)]) + b[n]

* int8, per channel (LLM.int8()'s vector-wise baseline): one scale per output row, so
  it factors out of the sum: y = s * (x (q - z)^T), one multiply per output, exact.
* int4, per group of G input columns (GPTQ/AWQ storage): the scale changes along k, so
  each code is scaled inside the loop. Codes 2j and 2j+1 share byte j (low nibble, high
  nibble); symmetric codes carry an offset of 8 (z = 8), asymmetric ones a stored zero.

Small M (a decode step, a few rows): a program computes all its rows for BLOCK_N output
channels, multiplying broadcast tiles and summing (below ``tl.dot``'s 16-row tile). Past
16 rows the grid repeats over row blocks and re-reads W each time: a GEMM wants tl.dot.
Interpreter: fine for the integer shifts and masks here; no bfloat16.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ..quant.int4 import SYMMETRIC_OFFSET
from ..quant.primitives import dequantize_codes, unpack_int4
from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, jit, tl, triton

BLOCK_N, BLOCK_K, MAX_BLOCK_M = 16, 32, 16


def _granularity(scale: torch.Tensor, K: int) -> tuple[str, int | None]:
    """How (rows, n_groups) scales were made: per tensor, per channel, or groups of G."""
    rows, n_groups = scale.shape
    if n_groups == 1:
        return ("tensor" if rows == 1 else "channel"), None
    return "group", K // n_groups


def int8_gemv_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                        zero: torch.Tensor | None = None, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """x (..., K), codes (N, K) int8 (or uint8 with zero), scale (N | 1, n_groups) -> (..., N)."""
    gran, G = _granularity(scale, qweight.shape[1])
    return F.linear(x, dequantize_codes(qweight, scale, zero, gran, G, x.dtype), bias)


def int4_gemv_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                        zero: torch.Tensor | None = None, bias: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """x (..., K), packed codes (N, K/2) uint8, scale (N | 1, n_groups) -> (..., N)."""
    q = unpack_int4(qweight)  # (N, K) in 0..15
    if zero is None:  # symmetric: stored with an offset of 8
        q = q.to(torch.int8) - SYMMETRIC_OFFSET
    gran, G = _granularity(scale, q.shape[1])
    return F.linear(x, dequantize_codes(q, scale, zero, gran, G, x.dtype), bias)


@jit
def _int8_gemv_kernel(X, W, S, Z, BIAS, Y, M, N, K, sxm, swn, ssn, szn, sym,
                      HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (output block, row block): BLOCK_M rows x BLOCK_N channels, all of K."""
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    z = 0.0
    if HAS_ZERO:
        z = tl.load(Z + offs_n * szn, mask=n_ok, other=0).to(tl.float32)  # (BN,)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(X + offs_m[:, None] * sxm + offs_k[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)  # (BM, BK)
        q = tl.load(W + offs_n[:, None] * swn + offs_k[None, :],
                    mask=n_ok[:, None] & k_ok[None, :], other=0).to(tl.float32)  # (BN, BK)
        if HAS_ZERO:
            q = q - z[:, None]  # asymmetric codes: uint8 with a zero point per row
        acc += tl.sum(x[:, None, :] * q[None, :, :], 2)  # (BM, BN)
    # One scale per channel factors out of the sum over k: scale the output, not W.
    y = acc * tl.load(S + offs_n * ssn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], y.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@jit
def _int4_gemv_kernel(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
                      HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """As the int8 kernel, over packed bytes: BLOCK_K bytes (2 * BLOCK_K codes) per step."""
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)  # byte j holds codes 2j (low) and 2j+1 (high)
        j_ok = offs_j < K // 2
        w_mask = n_ok[:, None] & j_ok[None, :]
        packed = tl.load(W + offs_n[:, None] * swn + offs_j[None, :], mask=w_mask, other=0)
        lo = (packed & 0xF).to(tl.float32)  # (BN, BK) code 2j
        hi = (packed >> 4).to(tl.float32)  # (BN, BK) code 2j+1
        # G is even, so both codes of a byte sit in one group: one scale (and zero) each.
        grp = offs_n[:, None] * ssn + ((2 * offs_j) // G)[None, :] * ssg
        s = tl.load(S + grp, mask=w_mask, other=0.0).to(tl.float32)  # (BN, BK)
        if HAS_ZERO:
            z = tl.load(Z + offs_n[:, None] * szn + ((2 * offs_j) // G)[None, :] * szg,
                        mask=w_mask, other=0).to(tl.float32)
        else:
            z = 8.0  # symmetric codes are stored with an offset of 8
        x_mask = m_ok[:, None] & j_ok[None, :]
        x_lo = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :], mask=x_mask,
                       other=0.0).to(tl.float32)  # (BM, BK) x[2j]
        x_hi = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :] + 1, mask=x_mask,
                       other=0.0).to(tl.float32)  # (BM, BK) x[2j+1]
        acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2)
        acc += tl.sum(x_hi[:, None, :] * ((hi - z) * s)[None, :, :], 2)  # (BM, BN)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _prepare(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
             zero: torch.Tensor | None, bias: torch.Tensor | None, K: int, codes: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks shared by both launches; returns x as (M, K) and the empty output (M, N)."""
    N = qweight.shape[0]
    if x.shape[-1:] != (K,) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (..., {K}) for {codes} codes "
                         f"{tuple(qweight.shape)}; got {tuple(x.shape)} {x.dtype}")
    if x.dtype == torch.bfloat16 and backend(x) == "interpreter":
        raise ValueError("Triton's interpreter has no bfloat16 arithmetic: use fp32 or fp16")
    if scale.dim() != 2 or scale.shape[0] not in (1, N) or K % scale.shape[1]:
        raise ValueError(f"scale must be (N or 1, n_groups) with n_groups dividing K = {K}; "
                         f"got {tuple(scale.shape)}")
    if zero is not None and (zero.shape != scale.shape or zero.dtype != torch.uint8):
        raise ValueError(f"zero must be uint8 of scale's shape {tuple(scale.shape)}; got "
                         f"{tuple(zero.shape)} {zero.dtype}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must be ({N},); got {tuple(bias.shape)}")
    if qweight.stride(-1) != 1:
        raise ValueError("qweight must be contiguous along its rows")
    backend(*(t for t in (x, qweight, scale, zero, bias) if t is not None))  # one device
    x2 = x.reshape(-1, K)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()  # (M, K)
    return x2, x2.new_empty(x2.shape[0], N)  # (M, N)


def _grid(M: int, N: int) -> tuple[int, tuple[int, int]]:
    block_m = min(MAX_BLOCK_M, triton.next_power_of_2(max(M, 1)))
    return block_m, (triton.cdiv(N, BLOCK_N), triton.cdiv(M, block_m))


def int8_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                     zero: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     kernel=None) -> torch.Tensor:
    """y = x @ W^T (+ b) from int8 codes (N, K) and per-channel (or per-tensor) scales."""
    if qweight.dim() != 2 or qweight.dtype != (torch.int8 if zero is None else torch.uint8):
        raise ValueError(f"want int8 codes (N, K), or uint8 with a zero point; got "
                         f"{tuple(qweight.shape)} {qweight.dtype} (zero "
                         f"{'given' if zero is not None else 'None'})")
    K = qweight.shape[1]
    if scale.dim() == 2 and scale.shape[1] != 1:
        raise ValueError(f"the int8 kernel takes one scale per channel (or tensor); got "
                         f"{scale.shape[1]} groups per row: use the reference for groups")
    x2, y = _prepare(x, qweight, scale, zero, bias, K, "int8")
    if y.numel():
        block_m, grid = _grid(*y.shape)
        (kernel or _int8_gemv_kernel)[grid](
            x2, qweight, scale, zero if zero is not None else scale,
            bias if bias is not None else scale, y, y.shape[0], y.shape[1], K, x2.stride(0),
            qweight.stride(0), scale.stride(0) if scale.shape[0] > 1 else 0,
            0 if zero is None or zero.shape[0] == 1 else zero.stride(0), y.stride(0),
            HAS_ZERO=zero is not None, HAS_BIAS=bias is not None, BLOCK_M=block_m,
            BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return y.view(*x.shape[:-1], y.shape[1])


def int4_gemv_triton(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                     zero: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     kernel=None) -> torch.Tensor:
    """y = x @ W^T (+ b) from packed int4 codes (N, K/2) and group-wise scales."""
    if qweight.dim() != 2 or qweight.dtype != torch.uint8:
        raise ValueError(f"want packed int4 codes (N, K/2) uint8; got {tuple(qweight.shape)} "
                         f"{qweight.dtype}")
    K = 2 * qweight.shape[1]
    x2, y = _prepare(x, qweight, scale, zero, bias, K, "int4")
    G = K // scale.shape[1]
    if G % 2:
        raise ValueError(f"group_size must be even (both codes of a byte share a group); "
                         f"got {G}")
    if y.numel():
        block_m, grid = _grid(*y.shape)
        rows = scale.shape[0] > 1  # a per-tensor scale (1, 1) is read at row 0 by every n
        (kernel or _int4_gemv_kernel)[grid](
            x2, qweight, scale, zero if zero is not None else scale,
            bias if bias is not None else scale, y, y.shape[0], y.shape[1], K, G,
            x2.stride(0), qweight.stride(0), scale.stride(0) * rows, scale.stride(1),
            zero.stride(0) * rows if zero is not None else 0,
            zero.stride(1) if zero is not None else 0, y.stride(0),
            HAS_ZERO=zero is not None, HAS_BIAS=bias is not None, BLOCK_M=block_m,
            BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K // 2)
    return y.view(*x.shape[:-1], y.shape[1])


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
              zero: torch.Tensor | None = None, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """The int8 kernel on a GPU (or under the interpreter), else the reference."""
    tensors = (t for t in (x, qweight, scale, zero, bias) if t is not None)
    if backend(*tensors) == "reference":
        return int8_gemv_reference(x, qweight, scale, zero, bias)
    return int8_gemv_triton(x, qweight, scale, zero, bias)


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
              zero: torch.Tensor | None = None, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """The int4 kernel on a GPU (or under the interpreter), else the reference."""
    tensors = (t for t in (x, qweight, scale, zero, bias) if t is not None)
    if backend(*tensors) == "reference":
        return int4_gemv_reference(x, qweight, scale, zero, bias)
    return int4_gemv_triton(x, qweight, scale, zero, bias)


def _bias(layer, x: torch.Tensor) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().to(x.dtype)


def int8_linear(x: torch.Tensor, layer) -> torch.Tensor:
    """An :class:`~infer_lab.quant.int8.Int8Linear`'s forward through the int8 kernel."""
    return int8_gemv(x, layer.qweight, layer.scale, layer.zero, _bias(layer, x))


def int4_linear(x: torch.Tensor, layer) -> torch.Tensor:
    """An :class:`~infer_lab.quant.int4.Int4Linear`'s forward through the int4 kernel."""
    return int4_gemv(x, layer.qweight, layer.scale, layer.zero, _bias(layer, x))


# -- grading ------------------------------------------------------------------------------
def _layer(bits: int, seed: int, name: str, M: int, K: int, N: int, dtype: torch.dtype,
           symmetric: bool = True, group: int | None = None, bias: bool = True,
           granularity: str = "channel") -> Case:
    """A real Int8Linear / Int4Linear quantized from a random nn.Linear, and x (M, K)."""
    from ..quant.int4 import Int4Linear
    from ..quant.int8 import Int8Linear

    g = generator(seed, name)
    lin = torch.nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K ** 0.5)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=g))
    gran = "group" if group else granularity
    layer = (Int8Linear if bits == 8 else Int4Linear).from_linear(lin, gran, group, symmetric)
    x = torch.randn(M, K, generator=g).to(dtype)
    atol, rtol = tolerance(dtype)
    return Case(name, (x, layer.qweight, layer.scale, layer.zero, _bias(layer, x)),
                atol=atol, rtol=rtol)


def cases(bits: int, seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """GEMV (M = 1) and small GEMMs, K and N with tails, symmetric and asymmetric codes."""
    f32, f16 = torch.float32, torch.float16
    group = {8: None, 4: 32}[bits]
    out = [
        _layer(bits, seed, "gemv", 1, 64, 16, f32, group=group),
        _layer(bits, seed, "gemv-tails", 1, 70, 33, f32, group=group and 14),  # K, N tails
        _layer(bits, seed, "asymmetric", 3, 96, 20, f32, False, group),
        _layer(bits, seed, "fp16-no-bias", 5, 128, 24, f16, group=group, bias=False),
        _layer(bits, seed, "gemm-16", 16, 64, 17, f32, False, group),
        _layer(bits, seed, "gemm-19", 19, 32, 8, f16, group=group),  # two row blocks
        _layer(bits, seed, "per-tensor", 2, 48, 9, f32, granularity="tensor"),
        _layer(bits, seed, "empty-batch", 0, 32, 8, f32, group=group),
    ]
    if bits == 4:
        out.append(_layer(4, seed, "per-channel", 2, 64, 12, f32, False, None))
    g = generator(seed, "random-shapes", bits)
    for i in range(3):
        M = int(torch.randint(1, 17, (1,), generator=g))
        K = 32 * int(torch.randint(1, 9, (1,), generator=g))  # up to 256, groups of 32
        N = int(torch.randint(1, 48, (1,), generator=g))
        out.append(_layer(bits, seed, f"random-{i}", M, K, N, (f32, f16)[i % 2],
                          bool(i % 2), group))
    device = device_or_default(device)
    return [c.to(device) for c in out]


def validate(fn=None, seed: int = 0, bits: int = 4,
             device: torch.device | str | None = None) -> Report:
    """Grade ``fn`` (default: the Triton launch; or a ``@jit`` kernel with the int``bits``
    kernel's signature) against the dequantize-then-F.linear reference."""
    launch, ref = {8: (int8_gemv_triton, int8_gemv_reference),
                   4: (int4_gemv_triton, int4_gemv_reference)}[bits]
    if fn is None or hasattr(fn, "fn"):  # a jit kernel: launch it through the wrapper
        kernel = fn
        fn = lambda *a: launch(*a, kernel=kernel)
    return compare(f"int{bits}_gemv", fn, ref, cases(bits, seed, device))


def benchmark(shapes: list[tuple[int, int, int]] | None = None, bits: int = 4,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              repeats: int = 10) -> list[dict]:
    """Median time of y = x W^T for (M, K, N): ms and GB/s of weight bytes read (codes,
    scales, zeros: what bounds a decode step), beside the dense layer the codes replace
    (``dense``: F.linear on W in x's dtype, fp16 on a GPU, the bar int4 must beat).

    On a CPU only the references (dequantize, then F.linear; and the dense layer) are
    timed: the interpreter is not a speed.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    ref, launch = {8: (int8_gemv_reference, int8_gemv_triton),
                   4: (int4_gemv_reference, int4_gemv_triton)}[bits]
    rows = []
    for M, K, N in shapes or [(1, 4096, 4096), (16, 4096, 4096)]:
        case = _layer(bits, 0, "bench", M, K, N, dtype,
                      group=64 if bits == 4 else None).to(device)
        row = {"kernel": f"int{bits}_gemv", "shape": (M, K, N), "dtype": str(dtype)}
        packed = sum(a.numel() * a.element_size() for a in case.args[1:4] if a is not None)
        w = torch.randn(N, K, device=device, dtype=dtype)  # the dense weight, same shape
        impls = {"reference": partial(ref, *case.args), "dense": partial(F.linear, case.args[0], w),
                 "triton": partial(launch, *case.args)}
        rows += timed_rows(row, impls, backend(case.args[0]) == "triton", device, repeats,
                           {"reference": packed, "triton": packed,
                            "dense": w.numel() * w.element_size()},
                           notes={"reference": "dequantize, then F.linear",
                                  "dense": f"F.linear, {str(dtype)[6:]} weight"})
    return rows
