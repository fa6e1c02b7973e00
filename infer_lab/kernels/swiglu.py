"""SwiGLU's activation fused: silu(a) * b in one pass.

    swiglu(a, b) = silu(a) * b = a * sigmoid(a) * b          (Shazeer 2020, "GLU Variants")

with a = x W1 (the gate) and b = x W3 (the up projection), as in the Llama MLP of
:class:`infer_lab.model.MLP`: ``w2(F.silu(w1(x)) * w3(x))``. Eagerly that is two ops: silu
reads a and writes silu(a), then the product reads silu(a) and b and writes y; five tensor
passes where the fused kernel needs three (read a, read b, write y).
:func:`unfused_traffic` and :func:`fused_traffic` count them. The kernel computes in fp32 and
rounds once; the eager pair rounds silu(a) to the input dtype in between.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, check_launchable, jit, tl, triton

BLOCK = 1024  # elements per program: cases put tails of 1 to 3 past multiples of it
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def swiglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The MLP's gated activation, in the inputs' dtype."""
    return F.silu(a) * b


@jit
def _swiglu_kernel(a_ptr, b_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    # sigmoid saturates to 0 for very negative a, so a * sigmoid(a) -> -0, not NaN.
    y = a * tl.sigmoid(a) * b
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"swiglu needs equal shapes (gate and up projection): "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"swiglu needs one dtype: {a.dtype} and {b.dtype}")
    if a.dtype not in DTYPES:
        raise ValueError(f"swiglu supports {', '.join(map(str, DTYPES))}, not {a.dtype}")
    if a.device != b.device:
        raise ValueError(f"inputs are on different devices: {a.device} and {b.device}")
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError("swiglu indexes memory as one flat run: pass contiguous tensors "
                         "(a gate and up projection split from one fused matmul are views: "
                         ".contiguous() them)")
    check_launchable(a)


def swiglu_triton(a: torch.Tensor, b: torch.Tensor, *, kernel=None) -> torch.Tensor:
    """``cdiv(n, BLOCK)`` programs. ``kernel`` (default the fused kernel above) takes
    ``(a_ptr, b_ptr, y_ptr, n, BLOCK)``."""
    _check(a, b)
    kernel = kernel if kernel is not None else _swiglu_kernel
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    n = a.numel()
    if n:
        kernel[(triton.cdiv(n, BLOCK),)](a, b, out, n, BLOCK=BLOCK)
    return out


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b: the Triton kernel on a GPU (or under the interpreter), else PyTorch."""
    if backend(a, b) == "reference":
        return swiglu_reference(a, b)
    return swiglu_triton(a, b)


def unfused_traffic(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[str, int]]:
    """(op, bytes read + written) for each op of :func:`swiglu_reference` run eagerly."""
    s = torch.empty(0, dtype=dtype).element_size()
    return [("silu(a)", 2 * n * s),      # read a, write silu(a)
            ("* b", 3 * n * s)]          # read silu(a) and b, write y


def fused_traffic(n: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the fused kernel moves: read a and b once, write y once."""
    return 3 * n * torch.empty(0, dtype=dtype).element_size()


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Sizes on both sides of block edges (tails of 1 to 3), below one block, one element,
    empty, 2-D and 3-D shapes, gates far into both tails of the sigmoid; random sizes; fp32
    and fp16 (bf16 on a GPU)."""
    device = device_or_default(device)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    specs: list[tuple[str, tuple[int, ...], float]] = [
        ("1", (1,), 1.0), ("1000", (1000,), 2.0), (f"{BLOCK}", (BLOCK,), 2.0),
        (f"{BLOCK + 1}", (BLOCK + 1,), 2.0), (f"{2 * BLOCK + 2}", (2 * BLOCK + 2,), 2.0),
        (f"{3 * BLOCK + 3}", (3 * BLOCK + 3,), 2.0), ("0", (0,), 1.0),
        ("3x341", (3, 341), 2.0), ("2x3x50", (2, 3, 50), 2.0),
        ("large gate 700", (700,), 30.0)]
    g = generator(seed, "swiglu", "sizes")
    specs += [(f"random {int(n)}", (int(n),), 3.0)
              for n in torch.randint(1, 4 * BLOCK, (3,), generator=g)]
    out = []
    for dtype in dtypes:
        atol, rtol = tolerance(dtype)
        for name, shape, scale in specs:
            g = generator(seed, "swiglu", name, str(dtype))
            a = (torch.randn(shape, generator=g) * scale).to(device, dtype)
            b = torch.randn(shape, generator=g).to(device, dtype)
            out.append(Case(f"{name} {str(dtype)[6:]}", (a, b), atol=atol, rtol=rtol))
    return out


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """``fn`` (default :func:`swiglu_triton`) against :func:`swiglu_reference`."""
    return compare("swiglu", fn if fn is not None else swiglu_triton, swiglu_reference,
                   cases(seed, device))


def benchmark(sizes: tuple[tuple[int, int], ...] | None = None, repeats: int = 10,
              dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> list[dict]:
    """Median time per call on (tokens, d_ff) activations; each row counts the bytes its own
    implementation moves (eager pair or fused kernel) and the GB/s that makes.

    On a CPU only the reference is timed: the interpreter is a correctness tool.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sizes = sizes or (((512, 2816), (4096, 11008), (8192, 14336)) if device.type == "cuda"
                      else ((64, 1536), (512, 2816)))
    rows = []
    for shape in sizes:
        a, b = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
        n = a.numel()
        row = {"kernel": "swiglu", "size": shape, "dtype": str(dtype)}
        moved = {"reference": sum(x for _, x in unfused_traffic(n, dtype)),
                 "triton": fused_traffic(n, dtype)}
        impls = {"reference": partial(swiglu_reference, a, b),
                 "triton": partial(swiglu_triton, a, b)}
        rows += timed_rows(row, impls, backend(a) == "triton", device, repeats, moved)
    return rows
