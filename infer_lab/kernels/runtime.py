"""Where a kernel runs: Triton on a CUDA device, Triton's interpreter on the CPU when
asked (``TRITON_INTERPRET=1``), else the PyTorch reference.

Triton is optional (``pip install triton``, or the ``kernels`` extra that the lab and dev
installs include): without it this module provides stand-ins for ``triton``, ``tl`` and
``jit`` so that every kernel file still imports, and :func:`backend` sends every call to
the reference, saying once how to install Triton.

``TRITON_INTERPRET=1`` must be set before Triton is imported (``triton.jit`` reads it when a
kernel is defined): the test suite sets it in ``tests/conftest.py`` on machines without
CUDA. Under the interpreter each program of the grid runs in turn on the CPU, every op
simulated with numpy: a correctness tool (tiny grids, well under 1 GB/s), never a speed.
Its limits bite in two places here: no bfloat16 arithmetic (kernels are checked in fp32
and fp16 under it) and scalars are Python numbers (no ``.dtype``).
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace
from typing import Any, Literal

import torch

INSTALL = "pip install triton (or the 'kernels' extra: pip install -e '.[kernels]')"
Backend = Literal["triton", "interpreter", "reference"]

# Read once, beside the import of Triton: triton.jit chose interpreted or compiled kernels
# from this value, so setting the variable later would not change what the kernels are.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    jit = triton.jit
except ImportError:  # the package imports and runs without it
    HAS_TRITON = False

    class _Missing:
        """A kernel defined without Triton: launching it says how to install Triton."""

        def __init__(self, fn):
            self.fn, self.__name__, self.__doc__ = fn, fn.__name__, fn.__doc__

        def __getitem__(self, grid):
            raise ImportError(f"the Triton kernel {self.__name__} needs Triton: {INSTALL}")

    def jit(fn=None, **kwargs):
        return _Missing(fn) if fn is not None else _Missing

    triton = SimpleNamespace(jit=jit, cdiv=lambda a, b: -(-a // b),
                             next_power_of_2=lambda n: 1 << max(0, int(n) - 1).bit_length())
    tl = SimpleNamespace(constexpr=Any)  # only annotations are evaluated without Triton

_warned = False


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on the CPU: ``TRITON_INTERPRET=1`` was
    set when Triton was imported (setting it afterwards has no effect on the kernels)."""
    return _INTERPRET


def backend(*tensors: torch.Tensor) -> Backend:
    """Which implementation a call on ``tensors`` uses (they must share one device)."""
    global _warned
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"kernel inputs are on different devices: "
                         f"{', '.join(sorted(map(str, devices)))}")
    device = devices.pop() if devices else torch.device("cpu")
    if not HAS_TRITON:
        if device.type == "cuda" and not _warned:
            warnings.warn(f"Triton is not installed: using the PyTorch references. {INSTALL}",
                          stacklevel=3)
            _warned = True
        return "reference"
    if device.type == "cuda":
        return "triton"
    return "interpreter" if interpreting() else "reference"


def uses_triton(*tensors: torch.Tensor) -> bool:
    return backend(*tensors) != "reference"


def check_launchable(x: torch.Tensor) -> None:
    """Refuse a Triton launch on ``x`` that cannot run: CPU tensors without the interpreter,
    or bfloat16 under it (numpy has no bfloat16: a bf16 add came back NaN and casts to bf16
    truncate, triton 3.9; bf16 is checked on a GPU only)."""
    if x.device.type != "cpu":
        return
    if not interpreting():
        raise ValueError("a Triton kernel on CPU tensors needs its interpreter: set "
                         "TRITON_INTERPRET=1 before importing triton, or use a GPU")
    if x.dtype == torch.bfloat16:
        raise ValueError("Triton's interpreter has no bfloat16 arithmetic: check "
                         "float32/float16 here, bfloat16 on a GPU")
