"""Tiled matmul C = A @ B: each program computes one (BLOCK_M, BLOCK_N) tile of C.

    C[m, n] = sum_k A[m, k] B[k, n]        A: (M, K), B: (K, N), C: (M, N)

Program (i, j) walks K in steps of BLOCK_K: it loads an A tile (BLOCK_M, BLOCK_K) and a B
tile (BLOCK_K, BLOCK_N), multiplies them with ``tl.dot`` (tensor cores on a GPU) and adds the
result into an fp32 accumulator that never leaves registers; only the finished tile is
rounded to C's dtype and stored. Each element of A is read N / BLOCK_N times instead of N
times: tiling is what turns a memory-bound loop nest into a compute-bound one (arithmetic
intensity grows with the tile; the Triton matmul tutorial, CUTLASS's hierarchy).

Every edge needs a mask: rows past M and columns past N (the last tiles of C), and the
K tail, where the last step's tiles run past K and must load 0 so they add nothing.
The next steps, not taken here: grouped tile order for L2 reuse, split-K, persistent
programs, TMA loads on Hopper.
"""

from __future__ import annotations

from functools import cache, partial

import torch

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl, triton
from .vector_add import poisoned

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The interpreter runs one numpy dot per (program, K step): few, small tiles keep it quick.
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16}
# A learner's kernel on a GPU gets one plain config; ours is autotuned (_autotuned).
GPU_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A @ B accumulated in fp32, returned in A's dtype."""
    return (a.float() @ b.float()).to(a.dtype)


@jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                   stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) rows of C owned here
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,) columns of C
    rk = tl.arange(0, BLOCK_K)  # (BK,)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak  # (BM, BK)
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn  # (BK, BN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # fp16 sums of K terms would drift
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_ok = k * BLOCK_K + rk < K  # (BK,) the last step runs past K: load 0 there
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)  # (BM, BK)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (rn[None, :] < N), other=0.0)  # (BK, BN)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)  # (BM, BN)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn  # (BM, BN)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@cache
def _autotuned():
    """The kernel behind ``triton.autotune``, built on first use on a GPU only: autotuning
    times each config on the device, which under the interpreter would time numpy."""
    configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8,
                             num_stages=3),
               triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4,
                             num_stages=4),
               triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4,
                             num_stages=4),
               triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4,
                             num_stages=3)]
    return triton.autotune(configs=configs, key=["M", "N", "K"])(_matmul_kernel)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul takes two matrices, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)} (flatten batch dimensions into rows of A)")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: A is {tuple(a.shape)}, B is "
                         f"{tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"tl.dot needs one dtype: A is {a.dtype}, B is {b.dtype}")
    if a.dtype not in DTYPES:
        raise ValueError(f"matmul supports {', '.join(map(str, DTYPES))}, not {a.dtype}")
    if a.device != b.device:
        raise ValueError(f"A is on {a.device}, B on {b.device}")
    check_launchable(a)


def matmul_triton(a: torch.Tensor, b: torch.Tensor, *, kernel=None) -> torch.Tensor:
    """A 2-D grid of (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)) programs. Any strides work (a
    transposed B is read in place). ``kernel`` (default the tiled kernel above, autotuned on a
    GPU) takes ``(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
    stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION)``."""
    _check(a, b)
    (M, K), N = a.shape, b.shape[1]
    c = torch.empty(M, N, dtype=a.dtype, device=a.device)  # (M, N)
    if not c.numel():
        return c
    # torch's fp32 matmul does not round inputs to TF32 (10 mantissa bits) by default;
    # ask tl.dot for IEEE fp32 so the kernel is held to fp32's tolerance. The interpreter
    # ignores the setting (its tl.dot is a numpy fp32 matmul): only a GPU run checks it.
    precision = "ieee" if a.dtype == torch.float32 else "tf32"  # no effect on fp16/bf16
    args = (a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            c.stride(0), c.stride(1))
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    if kernel is None and a.device.type == "cuda":
        _autotuned()[grid](*args, DOT_PRECISION=precision)
    else:
        blocks = INTERPRETER_BLOCKS if a.device.type == "cpu" else GPU_BLOCKS
        kernel = kernel if kernel is not None else _matmul_kernel
        kernel[grid](*args, **blocks, DOT_PRECISION=precision)
    return c


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A @ B: the Triton kernel on a GPU (or under the interpreter), else PyTorch."""
    if backend(a, b) == "reference":
        return matmul_reference(a, b)
    return matmul_triton(a, b)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Exact tiles, tails of 1 to 3 past a tile on every edge (K included), one row, a
    transposed B, K = 0 (C is zeros), no rows, random shapes up to 70; fp32 and fp16 (bf16 on
    a GPU). Inputs are followed by NaN (:func:`~infer_lab.kernels.vector_add.poisoned`), so a
    load that forgets its mask shows up as NaN in C."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    # (M, K, N): tiny, every (program, K step) runs in numpy under the interpreter
    shapes = [(1, 1, 1), (16, 16, 16), (32, 32, 32), (33, 17, 35), (34, 50, 66), (35, 35, 33),
              (1, 70, 70), (70, 70, 70), (33, 45, 29), (5, 0, 7), (0, 8, 4)]
    g = generator(seed, "matmul", "shapes")
    shapes += [tuple(int(d) for d in torch.randint(1, 71, (3,), generator=g)) for _ in range(3)]
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        for M, K, N in shapes:
            g = generator(seed, "matmul", (M, K, N), str(dtype))
            a = torch.randn(M, K, generator=g).to(device, dtype)
            b = torch.randn(K, N, generator=g).to(device, dtype)
            pad = 64 * (max(M, K, N) + 1)  # past any tile's overrun of the last row
            out.append(Case(f"{M}x{K} @ {K}x{N} {str(dtype)[6:]}",
                            (poisoned(a, pad), poisoned(b, pad)), atol=atol, rtol=rtol))
        g = generator(seed, "matmul", "transposed", str(dtype))
        a = torch.randn(20, 37, generator=g).to(device, dtype)
        bt = torch.randn(23, 37, generator=g).to(device, dtype)
        out.append(Case(f"20x37 @ (23x37).T {str(dtype)[6:]}",
                        (poisoned(a, 64 * 38), poisoned(bt, 64 * 38).T), atol=atol, rtol=rtol))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`matmul_triton`) against :func:`matmul_reference`."""
    return compare("matmul", fn if fn is not None else matmul_triton, matmul_reference,
                   cases(seed, device))


def benchmark(sizes: tuple[tuple[int, int, int], ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call of (M, K, N) products and achieved TFLOP/s (2 M N K flops).
    The reference here is ``a @ b`` itself (cuBLAS or the CPU BLAS), the bar to reach.

    On a CPU only the reference is timed: the interpreter is a correctness tool.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or (((1024, 1024, 1024), (4096, 4096, 4096), (8192, 8192, 8192))
                      if device.type == "cuda" else ((256, 256, 256), (1024, 1024, 1024)))
    rows = []
    for M, K, N in sizes:
        a = torch.randn(M, K, device=device, dtype=dtype)
        b = torch.randn(K, N, device=device, dtype=dtype)
        row = {"kernel": "matmul", "size": (M, K, N), "dtype": str(dtype)}
        flops = 2 * M * N * K
        impls = {"reference": partial(torch.matmul, a, b), "triton": partial(matmul_triton, a, b)}
        # warmup: the first call of a new shape autotunes; keep it out of the timing
        rows += timed_rows(row, impls, backend(a) == "triton", device, repeats,
                           flops=flops, notes={"reference": "a @ b"}, warmup=True)
    return rows
