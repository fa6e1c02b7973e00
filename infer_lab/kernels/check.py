"""Grading a kernel the way kernel competitions do: fixed and random shapes, seeds, a
tolerance per dtype, every case against the PyTorch reference.

A :class:`Case` is one input (built from a seed, so a run is repeatable and a hidden seed
can be mixed in so that an answer cannot be hard-coded); :func:`compare` runs the kernel
and the reference on each case and returns a :class:`Report` whose cases say the largest
error and whether it is within tolerance. Shapes include the awkward ones: sizes that are
not powers of two, tails of one to three elements past the last full block, a single row,
and empty inputs where the kernel accepts them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

# (atol, rtol) per dtype: fp32 accumulates in a different order than the reference; fp16
# and bf16 round every stored value (bf16 keeps 8 bits of mantissa).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance for {dtype}; known: {', '.join(map(str, TOLERANCES))}")
    return TOLERANCES[dtype]


def device_or_default(device: torch.device | str | None) -> torch.device:
    """``device``, or the CUDA device when there is one, else the CPU."""
    return torch.device(device if device is not None else
                        ("cuda" if torch.cuda.is_available() else "cpu"))


def generator(seed: int, *salt: Any) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and anything else (a case name, a hidden
    seed), so each case gets its own repeatable stream."""
    digest = hashlib.sha256(repr((seed, *salt)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass
class Case:
    """One input of a kernel: positional arguments, and the tolerance to hold it to."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    atol: float = 1e-4
    rtol: float = 1e-4

    def to(self, device: torch.device | str) -> Case:
        """The case with its tensor arguments on ``device`` (cases are built on the CPU,
        from seeds, so that a seed gives the same inputs on every device)."""
        args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args)
        return Case(self.name, args, self.kwargs, self.atol, self.rtol)


@dataclass
class CaseResult:
    name: str
    max_abs: float
    ok: bool
    error: str | None = None  # the exception a kernel raised, or the mismatch


@dataclass
class Report:
    kernel: str
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.ok]

    def __str__(self) -> str:
        ok = sum(c.ok for c in self.cases)
        lines = [f"{self.kernel}: {ok}/{len(self.cases)} cases within tolerance"]
        lines += [f"  FAIL {c.name}: {c.error}" for c in self.failures]
        return "\n".join(lines)


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def compare(kernel: str, fn: Callable[..., Any], ref: Callable[..., Any],
            cases: Iterable[Case]) -> Report:
    """Run ``fn`` and ``ref`` on every case; outputs (a tensor or a tuple of them) must
    match in shape, dtype and value within the case's tolerance."""
    results = []
    for case in cases:
        want = _as_tuple(ref(*case.args, **case.kwargs))
        try:
            got = _as_tuple(fn(*case.args, **case.kwargs))
        except Exception as e:  # noqa: BLE001 - a kernel that raises fails its case
            results.append(CaseResult(case.name, float("inf"), False,
                                      f"{type(e).__name__}: {e}"))
            continue
        results.append(_match(case, got, want))
    return Report(kernel, results)


def _match(case: Case, got: tuple, want: tuple) -> CaseResult:
    if len(got) != len(want):
        return CaseResult(case.name, float("inf"), False,
                          f"{len(got)} outputs, the reference has {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            return CaseResult(case.name, float("inf"), False,
                              f"got {tuple(g.shape)} {g.dtype}, want {tuple(w.shape)} {w.dtype}")
        if not w.numel():
            continue
        g32, w32 = g.float(), w.float()
        if not torch.isfinite(g32).all() and torch.isfinite(w32).all():
            return CaseResult(case.name, float("inf"), False, "non-finite output")
        err = (g32 - w32).abs()
        worst = max(worst, float(err.max()))
        bad = err > case.atol + case.rtol * w32.abs()
        if bad.any():
            i = int(bad.flatten().nonzero()[0])
            return CaseResult(case.name, worst, False,
                              f"{int(bad.sum())} of {w.numel()} values off; first at flat index "
                              f"{i}: got {float(g32.flatten()[i]):.6g}, want "
                              f"{float(w32.flatten()[i]):.6g}")
    return CaseResult(case.name, worst, True)
