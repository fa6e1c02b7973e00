"""Online softmax: a row longer than one block, read tile by tile with a running max and sum.

The fused softmax (:mod:`.softmax`) holds a whole row in one block. A longer row is read in
tiles of BLOCK columns, keeping a running max m and a running sum l of exp(x - m)
(Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"). When tile t
arrives with max m_t:

    m_new = max(m, m_t)
    l     = l * exp(m - m_new) + sum_j exp(x_j - m_new)      # rescale the old terms
    m     = m_new

after which l = sum over every column seen of exp(x - m): the terms summed earlier were
relative to the old max, and exp(m - m_new) moves them to the new one. A second pass writes
y = exp(x - m) / l. Two reads and one write of the row instead of the three reads of a
max pass, a sum pass and a write pass; FlashAttention (:mod:`.flash_attention`) keeps the
same m and l per query row and never writes the row at all.

Every tile is masked (the last one runs past n_cols), in both loops. Under Triton's
interpreter :func:`online_softmax_triton` gives each output row a guard band of one block,
so a store that forgets its mask lands there (and is reported) instead of in the next row
or the CPU heap; :func:`stores_outside_rows` runs the same check for any kernel of this
signature on any device.
"""

from __future__ import annotations

from functools import partial

import torch

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl
from .softmax import softmax_reference
from .vector_add import poisoned

BLOCK = 1024  # columns per tile on a GPU; the cases use small tiles so rows span several
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_GUARD_BYTE = 0xA5  # fills the guard band after each row; a stray store changes it


def online_softmax_reference(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Softmax over the last dimension (fp32 inside). ``block``, the kernel's tile width,
    changes how the row is read, never the answer."""
    return softmax_reference(x)


def running_stats(x: torch.Tensor, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The kernel's first loop in PyTorch: (m, l) of every row after each tile, (R,) each."""
    x2 = x.reshape(-1, x.shape[-1]).float()  # (R, C)
    m = torch.full((x2.shape[0],), float("-inf"))
    l = torch.zeros(x2.shape[0])
    out = []
    for start in range(0, x2.shape[1], block):
        tile = x2[:, start:start + block]  # (R, <= block)
        m_new = torch.maximum(m, tile.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(tile - m_new[:, None]).sum(-1)
        m = m_new
        out.append((m, l))
    return out


@jit
def _online_softmax_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride passes 2**31 on big inputs
    x_row = x_ptr + row * x_row_stride
    y_row = y_ptr + row * y_row_stride
    cols = tl.arange(0, BLOCK)  # (BLOCK,)
    m = float("-inf")  # running max of the row
    l = 0.0  # running sum of exp(x - m)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # The terms summed so far were relative to m: exp(m - m_new) moves them to m_new.
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        y = tl.exp(x - m) / l
        tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, block: int) -> None:
    if x.dim() < 1:
        raise ValueError("softmax needs at least one dimension (the row)")
    if x.dtype not in DTYPES:
        raise ValueError(f"online softmax supports {', '.join(map(str, DTYPES))}, not {x.dtype}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two (tl.arange needs one), got {block}")
    if x.stride(-1) != 1:
        raise ValueError("the kernel reads each row as one contiguous run: the last "
                         f"dimension must have stride 1, got strides {x.stride()}")
    check_launchable(x)


def guarded_rows(n_rows: int, n_cols: int, pad: int, dtype: torch.dtype,
                 device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, band): an empty (n_rows, n_cols) output whose every row is followed by ``pad``
    guard elements (row stride n_cols + pad), and the guard bytes (n_rows, pad * size),
    filled with a known byte so that a stray store shows."""
    buf = torch.empty(n_rows, n_cols + pad, dtype=dtype, device=device)  # (R, C + pad)
    size = buf.element_size()
    band = buf.view(torch.uint8)[:, n_cols * size:]  # (R, pad * size)
    band.fill_(_GUARD_BYTE)
    return buf[:, :n_cols], band


def _touched(band: torch.Tensor) -> int:
    return int((band != _GUARD_BYTE).sum())


def stores_outside_rows(kernel, n_rows: int = 3, n_cols: int = 37, block: int = 16,
                        device: torch.device | str | None = None) -> int:
    """Launch ``kernel`` (this file's signature) on a poisoned (n_rows, n_cols) input into
    guarded rows; return how many guard bytes it overwrote (0: every store stayed in its
    row). Run before grading, so a missing store mask cannot corrupt memory we do not own."""
    device = device_or_default(device)
    x = poisoned(torch.randn(n_rows, n_cols, generator=generator(0, "guard")).to(device),
                 block)  # (R, C), NaN after its end
    y, band = guarded_rows(n_rows, n_cols, block, x.dtype, device)
    kernel[(n_rows,)](x, y, n_cols, x.stride(0), y.stride(0), BLOCK=block)
    return _touched(band)


def online_softmax_triton(x: torch.Tensor, *, block: int = BLOCK, kernel=None) -> torch.Tensor:
    """One program per row, tiles of ``block`` columns. ``kernel`` (default the online
    kernel above) takes ``(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK)``."""
    _check(x, block)
    kernel = kernel if kernel is not None else _online_softmax_kernel
    if not x.numel():
        return torch.empty_like(x)
    try:
        x2 = x.view(-1, x.shape[-1])  # (R, C): rows stepped by a stride, columns by 1
    except RuntimeError as e:
        raise ValueError(f"the leading dimensions of strides {x.stride()} do not flatten "
                         "into evenly spaced rows: pass x.contiguous()") from e
    R, C = x2.shape
    # Under the interpreter a stray store would land in the next row or the CPU heap.
    guard = block if x.device.type == "cpu" else 0
    y2, band = guarded_rows(R, C, guard, x.dtype, x.device)
    kernel[(R,)](x2, y2, C, x2.stride(0), y2.stride(0), BLOCK=block)
    if guard and _touched(band):
        raise RuntimeError("the kernel stored past the end of a row (into the guard band "
                           "after column n_cols): does every tl.store, in both loops, have "
                           "mask=start + cols < n_cols?")
    return (y2.contiguous() if guard else y2).view(x.shape)


def online_softmax(x: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Softmax over the last dimension, rows of any length: the Triton kernel on a GPU (or
    under the interpreter), else PyTorch."""
    if backend(x) == "reference":
        return online_softmax_reference(x)
    return online_softmax_triton(x if x.stride(-1) == 1 else x.contiguous(), block=block)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Rows of one to dozens of tiles (tiles of 16 to 64 columns here), with tails of 1 to 3
    columns and exact multiples, one column, one row, no rows, a 3-D input, a strided view,
    logits near 100, a row whose first tile holds a logit far above the rest (an attention
    sink: the max must persist across tiles), and a row longer than the fused kernel's
    65536 columns; random shapes and tiles; fp32 and fp16 (bf16 on a GPU). Contiguous
    inputs are followed by NaN, so an unmasked load reads memory we own."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    # (name, shape, block, scale, shift); tiny: every tile runs in numpy under the interpreter
    specs = [("1x1 block 16", (1, 1), 16, 1.0, 0.0), ("2x16 block 16", (2, 16), 16, 1.0, 0.0),
             ("3x17 block 16", (3, 17), 16, 1.0, 0.0), ("2x98 block 32", (2, 98), 32, 2.0, 0.0),
             ("4x131 block 64", (4, 131), 64, 1.0, 0.0), ("5x67 block 16", (5, 67), 16, 3.0, 0.0),
             ("0x10 block 16", (0, 10), 16, 1.0, 0.0),
             ("2x3x50 block 16", (2, 3, 50), 16, 1.0, 0.0),
             ("large 3x200 block 32", (3, 200), 32, 5.0, 100.0)]
    g = generator(seed, "online_softmax", "shapes")
    for _ in range(3):
        r, c = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 7), (1, 401)))
        block = (16, 32, 64)[int(torch.randint(0, 3, (), generator=g))]
        specs.append((f"random {r}x{c} block {block}", (r, c), block, 3.0, 0.0))
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        tag = str(dtype)[6:]
        for name, shape, block, scale, shift in specs:
            g = generator(seed, "online_softmax", name, tag)
            x = (torch.randn(shape, generator=g) * scale + shift).to(device, dtype)
            out.append(Case(f"{name} {tag}", (poisoned(x, block),), {"block": block},
                            atol=atol, rtol=rtol))
        g = generator(seed, "online_softmax", "sink", tag)
        sink = torch.randn(2, 150, generator=g)
        sink[:, 0] += 100.0  # every later tile's max is ~100 below the first one's
        out.append(Case(f"attention sink 2x150 block 32 {tag}",
                        (poisoned(sink.to(device, dtype), 32),), {"block": 32},
                        atol=atol, rtol=rtol))
        wide = torch.randn(4, 160, generator=g).to(device, dtype)
        out.append(Case(f"strided 4x100 of 4x160 block 32 {tag}", (wide[:, :100],),
                        {"block": 32}, atol=atol, rtol=rtol))
    long = torch.randn(1, 70_001, generator=generator(seed, "online_softmax", "long")) * 3
    out.append(Case("long 1x70001 block 4096 float32", (poisoned(long.to(device), 4096),),
                    {"block": 4096}, *tolerance(torch.float32)))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`online_softmax_triton`; or a ``@jit`` kernel of the online
    kernel's signature, launched by it) against :func:`online_softmax_reference`."""
    if fn is None or hasattr(fn, "fn"):  # a jit kernel: launch it through the wrapper
        kernel = fn
        fn = lambda x, block=BLOCK: online_softmax_triton(x, block=block, kernel=kernel)
    return compare("online_softmax", fn, online_softmax_reference, cases(seed, device))


def benchmark(sizes: tuple[tuple[int, int], ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None, block: int = BLOCK,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call of (rows, cols) inputs and effective GB/s: the two reads and one
    write the online kernel makes, over the time (the reference is torch.softmax).

    On a CPU only the reference is timed: the interpreter is a correctness tool.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or (((4096, 8192), (1024, 131072)) if device.type == "cuda"
                      else ((256, 8192), (16, 131072)))
    rows = []
    for shape in sizes:
        x = torch.randn(shape, device=device, dtype=dtype)
        row = {"kernel": "online_softmax", "size": shape, "dtype": str(dtype)}
        moved = 3 * x.numel() * x.element_size()
        impls = {"reference": partial(online_softmax_reference, x),
                 "triton": partial(online_softmax_triton, x, block=block)}
        rows += timed_rows(row, impls, backend(x) == "triton", device, repeats, moved,
                           notes={"reference": "torch.softmax"})
    return rows
