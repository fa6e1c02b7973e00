"""Fused row softmax: one read and one write of each row, numerically stable.

    softmax(x)_j = exp(x_j - m) / sum_k exp(x_k - m),      m = max_k x_k

Subtracting the row max changes nothing mathematically (it cancels between numerator and
denominator) but keeps every exponent <= 0: without it, logits around 100 overflow fp32's
exp (it tops out near exp(88.7)) to inf, and inf / inf is NaN.

Unfused, PyTorch would read and write the row once per op (max, subtract, exp, sum,
divide); here one program holds a whole row in registers, so the row crosses memory twice
(the Triton fused-softmax tutorial's point). That needs the row to fit in one block:
``BLOCK = next_power_of_2(n_cols)``, capped at :data:`MAX_COLS`. Longer rows need a loop
over blocks with a running max and sum (online softmax, Milakov & Gimelshein 2018), the
step FlashAttention builds on.
"""

from __future__ import annotations

from functools import partial

import torch

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl, triton

MAX_COLS = 65536  # one row per program: beyond this the row no longer fits in registers
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, computed in fp32, returned in x's dtype."""
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


@jit
def _softmax_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride passes 2**31 on big inputs
    cols = tl.arange(0, BLOCK)  # (BLOCK,)
    mask = cols < n_cols
    # Lanes past the row's end read -inf: they lose the max and add exp(-inf) = 0 to the sum.
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf"))
    x = x.to(tl.float32)  # (BLOCK,) fp16/bf16 rows are reduced in fp32
    z = x - tl.max(x, axis=0)  # every exponent <= 0: no overflow
    num = tl.exp(z)
    y = num / tl.sum(num, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor) -> None:
    if x.dim() < 1:
        raise ValueError("softmax needs at least one dimension (the row)")
    if x.dtype not in DTYPES:
        raise ValueError(f"softmax supports {', '.join(map(str, DTYPES))}, not {x.dtype}")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"rows of {x.shape[-1]} columns do not fit one block (at most "
                         f"{MAX_COLS}): use softmax_reference, or an online softmax that "
                         f"loops over blocks")
    check_launchable(x)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (rows, n_cols) without a copy: the kernel steps rows by a stride, columns by 1."""
    if x.stride(-1) != 1:
        raise ValueError("softmax reads each row as one contiguous run: the last "
                         f"dimension must have stride 1, got strides {x.stride()}")
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError as e:
        raise ValueError(f"the leading dimensions of strides {x.stride()} do not flatten "
                         "into evenly spaced rows: pass x.contiguous()") from e


def softmax_triton(x: torch.Tensor, *, kernel=None) -> torch.Tensor:
    """One program per row. ``kernel`` (default the fused kernel above) takes
    ``(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK)``."""
    _check(x)
    kernel = kernel if kernel is not None else _softmax_kernel
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if not x.numel():
        return out
    x2, y2 = _rows(x), out.view(-1, x.shape[-1])  # (R, C) each
    n_cols = x2.shape[1]
    block = triton.next_power_of_2(n_cols)
    # More warps share a long row's lanes (ignored by the interpreter).
    num_warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    kernel[(x2.shape[0],)](x2, y2, n_cols, x2.stride(0), y2.stride(0), BLOCK=block,
                           num_warps=num_warps)
    return out


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension: the Triton kernel on a GPU (or under the
    interpreter), else PyTorch."""
    if backend(x) == "reference":
        return softmax_reference(x)
    return softmax_triton(x)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Rows of 1 column up to a few hundred (tails of 1 to 3 past a power of two), one row,
    no rows, a 3-D input, a strided view, logits near 100 (overflow without the max) and
    near 0; random shapes; fp32 and fp16 (bf16 on a GPU)."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    # (name, shape, scale, shift): kept tiny, every program runs in numpy under the interpreter
    specs = [("1x1", (1, 1), 1.0, 0.0), ("1x257", (1, 257), 1.0, 0.0),
             ("3x128", (3, 128), 1.0, 0.0), ("5x129", (5, 129), 1.0, 0.0),
             ("2x258", (2, 258), 1.0, 0.0), ("4x300", (4, 300), 2.0, 0.0),
             ("7x67", (7, 67), 1.0, 0.0), ("0x10", (0, 10), 1.0, 0.0),
             ("2x3x50", (2, 3, 50), 1.0, 0.0), ("large 3x200", (3, 200), 5.0, 100.0),
             ("tiny 2x131", (2, 131), 1e-3, 0.0)]
    g = generator(seed, "softmax", "shapes")
    for i in range(3):
        r, c = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 7), (1, 301)))
        specs.append((f"random {r}x{c}", (r, c), 3.0, 0.0))
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        for name, shape, scale, shift in specs:
            g = generator(seed, "softmax", name, str(dtype))
            x = (torch.randn(shape, generator=g) * scale + shift).to(device, dtype)
            out.append(Case(f"{name} {str(dtype)[6:]}", (x,), atol=atol, rtol=rtol))
        g = generator(seed, "softmax", "strided", str(dtype))
        wide = torch.randn(4, 160, generator=g).to(device, dtype)
        out.append(Case(f"strided 4x100 of 4x160 {str(dtype)[6:]}", (wide[:, :100],),
                        atol=atol, rtol=rtol))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`softmax_triton`) against :func:`softmax_reference`."""
    return compare("softmax", fn if fn is not None else softmax_triton, softmax_reference,
                   cases(seed, device))


def benchmark(sizes: tuple[tuple[int, int], ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call of (rows, cols) inputs, and effective GB/s: the one read and one
    write a fused softmax needs, over the time (the Triton tutorial's measure).

    On a CPU only the reference is timed: the interpreter is a correctness tool.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or (((4096, 1024), (4096, 4096), (4096, 16384)) if device.type == "cuda"
                      else ((1024, 1024), (1024, 4096)))
    rows = []
    for shape in sizes:
        x = torch.randn(shape, device=device, dtype=dtype)
        row = {"kernel": "softmax", "size": shape, "dtype": str(dtype)}
        moved = 2 * x.numel() * x.element_size()
        impls = {"reference": partial(softmax_reference, x), "triton": partial(softmax_triton, x)}
        rows += timed_rows(row, impls, backend(x) == "triton", device, repeats, moved)
    return rows
