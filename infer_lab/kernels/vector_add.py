"""Vector add, the first Triton lesson: programs, blocks, and a mask for the tail.

    out[i] = x[i] + y[i]                          for i in [0, n)

A Triton kernel is written for one *program*: program ``pid`` owns the block of indices
``pid * BLOCK + arange(BLOCK)``, and the launch grid starts ``cdiv(n, BLOCK)`` of them (the
Triton tutorial's first example; CUDA's thread blocks, one level up). ``BLOCK`` is a
compile-time constant, a power of two, so the last program's block runs past the end of the
vector whenever ``n`` is not a multiple of it: the mask ``offsets < n`` switches those lanes
off, for the loads and for the store.

Forget the mask and the loads read, and the store writes, memory that belongs to someone else.
On a GPU that is silent corruption; under Triton's interpreter it is a write into the CPU
heap. So under the interpreter :func:`vector_add_triton` hands the kernel an output with a
guard band of one block past its end, and says so when a kernel wrote into it.
"""

from __future__ import annotations

from functools import partial

import torch

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl, triton

BLOCK = 1024  # elements per program: cases put tails of 1 to 3 elements past multiples of it
_GUARD_BYTE = 0xA5  # fills the guard band; a store that lands there changes it
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def vector_add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


@jit
def _vector_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) this program's indices
    mask = offsets < n  # the last block's lanes past n do nothing
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def _check(x: torch.Tensor, y: torch.Tensor, block: int) -> None:
    if x.shape != y.shape:
        raise ValueError(f"vector_add needs equal shapes (no broadcasting): "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise ValueError(f"vector_add needs one dtype: {x.dtype} and {y.dtype}")
    if x.dtype not in DTYPES:
        raise ValueError(f"vector_add supports {', '.join(map(str, DTYPES))}, not {x.dtype}")
    if x.device != y.device:
        raise ValueError(f"inputs are on different devices: {x.device} and {y.device}")
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("vector_add indexes memory as one flat run: pass contiguous "
                         "tensors (.contiguous())")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two (tl.arange needs one), got {block}")
    check_launchable(x)


def vector_add_triton(x: torch.Tensor, y: torch.Tensor, *, block: int = BLOCK,
                      kernel=None) -> torch.Tensor:
    """Launch ``kernel`` (default the masked add above; an exercise passes its own, with the
    same signature ``(x_ptr, y_ptr, out_ptr, n, BLOCK)``) over ``cdiv(n, block)`` programs."""
    _check(x, y, block)
    kernel = kernel if kernel is not None else _vector_add_kernel
    n = x.numel()
    # Under the interpreter a missing mask writes into the CPU heap: give it a guard band.
    guard = block if x.device.type == "cpu" else 0
    buf = torch.empty(n + guard, dtype=x.dtype, device=x.device)  # (n + guard,)
    out = buf[:n]
    band = buf[n:].view(torch.uint8)
    band.fill_(_GUARD_BYTE)
    if n:  # a grid of zero programs is not a launch
        kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)
    if guard and not bool((band == _GUARD_BYTE).all()):
        raise RuntimeError("the kernel wrote past the end of its output (into the guard "
                           "band after element n): does every tl.store have mask=offsets < n?")
    return out.view(x.shape)


def vector_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y: the Triton kernel on a GPU (or under the interpreter), else PyTorch."""
    if backend(x, y) == "reference":
        return vector_add_reference(x, y)
    return vector_add_triton(x, y)


def poisoned(t: torch.Tensor, pad: int) -> torch.Tensor:
    """A contiguous copy of ``t`` whose storage runs on for ``pad`` NaNs past its end.

    A load that forgets its mask then reads NaN, in memory the caller owns, and the output
    says so (a non-finite value) instead of depending on whatever the heap held there.
    """
    buf = torch.full((t.numel() + pad,), float("nan"), dtype=t.dtype, device=t.device)
    buf[:t.numel()] = t.flatten()
    return buf[:t.numel()].view(t.shape)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Sizes on both sides of block edges (tails of 1 to 3), below one block, one element,
    empty, a 2-D shape, and random sizes; fp32 and fp16 (bf16 on a GPU). Each input is
    followed by a block of NaN (:func:`poisoned`), so an unmasked load reads memory we own."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    shapes: list[tuple[int, ...]] = [(1,), (1000,), (BLOCK,), (BLOCK + 1,), (2 * BLOCK + 2,),
                                     (3 * BLOCK + 3,), (0,), (3, 341)]
    g = generator(seed, "vector_add", "sizes")
    shapes += [(int(n),) for n in torch.randint(1, 4 * BLOCK, (3,), generator=g)]
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        for shape in shapes:
            g = generator(seed, "vector_add", shape, str(dtype))
            x, y = (poisoned(torch.randn(shape, generator=g).to(device, dtype), BLOCK)
                    for _ in range(2))
            out.append(Case(f"{'x'.join(map(str, shape))} {str(dtype)[6:]}", (x, y),
                            atol=atol, rtol=rtol))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`vector_add_triton`) against ``x + y`` on :func:`cases`."""
    return compare("vector_add", fn if fn is not None else vector_add_triton,
                   vector_add_reference, cases(seed, device))


def benchmark(sizes: tuple[int, ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call and achieved GB/s (reads x and y, writes out: 3 n elements).

    On a CPU only the reference is timed: the interpreter runs each program in numpy,
    a correctness tool whose speed says nothing about the kernel.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or ((1 << 20, 1 << 24, 1 << 26) if device.type == "cuda"
                      else (1 << 16, 1 << 20, 1 << 22))
    rows = []
    for n in sizes:
        x, y = (torch.randn(n, device=device, dtype=dtype) for _ in range(2))
        row = {"kernel": "vector_add", "size": n, "dtype": str(dtype)}
        moved = 3 * n * x.element_size()
        impls = {"reference": partial(vector_add_reference, x, y),
                 "triton": partial(vector_add_triton, x, y)}
        rows += timed_rows(row, impls, backend(x) == "triton", device, repeats, moved)
    return rows
