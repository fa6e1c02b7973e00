"""RMSNorm fused with its weight: one read of x and w, one write of y.

    y = round(x * rsqrt(mean(x^2) + eps)) * w          (Zhang & Sennrich 2019)

computed in fp32 and rounded to x's dtype before the weight multiplies it, exactly as
:class:`infer_lab.model.RMSNorm` does (squares of fp16/bf16 activations overflow or lose
precision, so the reduction is fp32).

The fusion lesson: PyTorch runs that line as a chain of ops (pow, mean, add, rsqrt, mul,
mul, plus the casts), and each op reads its inputs from memory and writes its result back.
The kernel keeps the row in registers between steps, so x crosses memory once each way.
:func:`unfused_traffic` and :func:`fused_traffic` count the bytes of each; a norm is
memory-bound, so the ratio is about the speed-up to expect on a GPU.
"""

from __future__ import annotations

from functools import partial

import torch

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl, triton

MAX_COLS = 65536  # one row per program, held in registers
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The formula of :class:`infer_lab.model.RMSNorm`, over the last dimension."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


@jit
def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, eps,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride passes 2**31 on big inputs
    cols = tl.arange(0, BLOCK)  # (BLOCK,)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    # Padded lanes hold 0 and add nothing; the mean divides by the real n_cols, not BLOCK.
    mean_sq = tl.sum(x * x, axis=0) / n_cols
    xn = x * tl.rsqrt(mean_sq + eps)  # (BLOCK,) fp32
    w = tl.load(w_ptr + cols, mask=mask)
    # The model rounds the normalised row to x's dtype, then multiplies by w in that dtype.
    y = xn.to(x_ptr.dtype.element_ty) * w
    tl.store(y_ptr + row * y_row_stride + cols, y, mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() < 1 or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rmsnorm needs weight of shape (n_cols,) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"rmsnorm supports {', '.join(map(str, DTYPES))}, not {x.dtype}")
    if weight.dtype != x.dtype:
        raise ValueError(f"the fused kernel multiplies in x's dtype: weight is {weight.dtype}, "
                         f"x is {x.dtype} (cast the weight, as model.to(dtype) does)")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device}, weight on {weight.device}")
    if not weight.is_contiguous():
        raise ValueError("the weight must be contiguous")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"rows of {x.shape[-1]} columns do not fit one block (at most "
                         f"{MAX_COLS}): use rmsnorm_reference")
    check_launchable(x)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, n_cols) without a copy: the kernel steps rows by a stride, columns by 1."""
    if x.stride(-1) != 1:
        raise ValueError("rmsnorm reads each row as one contiguous run: the last "
                         f"dimension must have stride 1, got strides {x.stride()}")
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError as e:
        raise ValueError(f"the leading dimensions of strides {x.stride()} do not flatten "
                         "into evenly spaced rows: pass x.contiguous()") from e


def rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, *,
                   kernel=None) -> torch.Tensor:
    """One program per row. ``kernel`` (default the fused kernel above) takes
    ``(x_ptr, w_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, eps, BLOCK)``."""
    _check(x, weight)
    kernel = kernel if kernel is not None else _rmsnorm_kernel
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not x.numel():
        return out
    x2, y2 = _rows(x), out.view(-1, x.shape[-1])  # (R, C) each
    n_cols = x2.shape[1]
    block = triton.next_power_of_2(n_cols)
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16  # ignored when interpreting
    kernel[(x2.shape[0],)](x2, weight, y2, n_cols, x2.stride(0), y2.stride(0), float(eps),
                           BLOCK=block, num_warps=num_warps)
    return out


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension: the Triton kernel on a GPU (or under the
    interpreter), else PyTorch."""
    if backend(x, weight) == "reference":
        return rmsnorm_reference(x, weight, eps)
    return rmsnorm_triton(x, weight, eps)


def unfused_traffic(n_rows: int, n_cols: int, dtype: torch.dtype = torch.float32
                    ) -> list[tuple[str, int]]:
    """(op, bytes read + written) for each op of :func:`rmsnorm_reference` run eagerly:
    every op reads its inputs from memory and writes its output back. The casts are free
    (no copy) when x is already fp32."""
    s, f, N, R = torch.empty(0, dtype=dtype).element_size(), 4, n_rows * n_cols, n_rows
    ops = [("x.float()", N * s + N * f)] if dtype != torch.float32 else []
    ops += [("pow(2)", 2 * N * f),                 # read xf, write xf^2
            ("mean(-1)", N * f + R * f),           # read xf^2, write one value per row
            ("+ eps", 2 * R * f),
            ("rsqrt", 2 * R * f),
            ("xf * r", N * f + R * f + N * f)]     # read xf and r, write the normalised row
    ops += [(".to(dtype)", N * f + N * s)] if dtype != torch.float32 else []
    ops += [("weight *", N * s + n_cols * s + N * s)]
    return ops


def fused_traffic(n_rows: int, n_cols: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the fused kernel moves: read x and the weight once, write y once."""
    s = torch.empty(0, dtype=dtype).element_size()
    return (2 * n_rows * n_cols + n_cols) * s


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Rows of 1 column up to a few hundred (tails of 1 to 3 past a power of two, where a
    mean over BLOCK instead of n_cols shows), one row, no rows, a 3-D input, a strided view,
    large and tiny magnitudes, another eps; random shapes; fp32 and fp16 (bf16 on a GPU)."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    # (name, shape, scale, eps): tiny shapes, every program runs in numpy under the interpreter
    specs = [("1x1", (1, 1), 1.0, 1e-5), ("1x257", (1, 257), 1.0, 1e-5),
             ("3x128", (3, 128), 1.0, 1e-5), ("5x129", (5, 129), 1.0, 1e-5),
             ("2x258", (2, 258), 1.0, 1e-5), ("4x300", (4, 300), 1.0, 1e-6),
             ("7x67", (7, 67), 1.0, 1e-5), ("0x10", (0, 10), 1.0, 1e-5),
             ("2x3x50", (2, 3, 50), 1.0, 1e-5), ("large 3x200", (3, 200), 100.0, 1e-5),
             ("tiny 2x131", (2, 131), 1e-2, 1e-5)]
    g = generator(seed, "rmsnorm", "shapes")
    for i in range(3):
        r, c = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 7), (1, 301)))
        specs.append((f"random {r}x{c}", (r, c), 2.0, 1e-5))
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        for name, shape, scale, eps in specs:
            g = generator(seed, "rmsnorm", name, str(dtype))
            x = (torch.randn(shape, generator=g) * scale).to(device, dtype)
            w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(device, dtype)
            out.append(Case(f"{name} {str(dtype)[6:]}", (x, w), {"eps": eps},
                            atol=atol, rtol=rtol))
        g = generator(seed, "rmsnorm", "strided", str(dtype))
        wide = torch.randn(4, 160, generator=g).to(device, dtype)
        w = (1 + 0.2 * torch.randn(100, generator=g)).to(device, dtype)
        out.append(Case(f"strided 4x100 of 4x160 {str(dtype)[6:]}", (wide[:, :100], w),
                        atol=atol, rtol=rtol))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`rmsnorm_triton`) against :func:`rmsnorm_reference`."""
    return compare("rmsnorm", fn if fn is not None else rmsnorm_triton, rmsnorm_reference,
                   cases(seed, device))


def benchmark(sizes: tuple[tuple[int, int], ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call of (rows, cols) inputs; each row counts the bytes its own
    implementation moves (the eager chain's or the fused kernel's) and the GB/s that makes.

    On a CPU only the reference is timed: the interpreter is a correctness tool.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or (((4096, 1024), (4096, 4096), (16384, 8192)) if device.type == "cuda"
                      else ((1024, 1024), (1024, 4096)))
    rows = []
    for n_rows, n_cols in sizes:
        x = torch.randn(n_rows, n_cols, device=device, dtype=dtype)
        w = torch.ones(n_cols, device=device, dtype=dtype)
        row = {"kernel": "rmsnorm", "size": (n_rows, n_cols), "dtype": str(dtype)}
        moved = {"reference": sum(b for _, b in unfused_traffic(n_rows, n_cols, dtype)),
                 "triton": fused_traffic(n_rows, n_cols, dtype)}
        impls = {"reference": partial(rmsnorm_reference, x, w),
                 "triton": partial(rmsnorm_triton, x, w)}
        rows += timed_rows(row, impls, backend(x) == "triton", device, repeats, moved)
    return rows
