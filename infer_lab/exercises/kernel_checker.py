"""Grading a Triton kernel, the way kernel competitions do (GPU MODE, LeetGPU).

The learner writes a ``@triton.jit`` kernel with the signature of one of
:mod:`infer_lab.kernels`' kernels; :class:`KernelExercise` launches it through that file's
wrapper (``softmax_triton(x, kernel=...)``) on that file's cases: fixed edge cases (tails
past a block, one row, no rows, huge logits) and random shapes from a seed, each held to
the tolerance of its dtype (:mod:`infer_lab.kernels.check`), against the PyTorch reference.
The seed is fresh on every check unless given, and the verdict names it, so an answer
cannot be tuned to one draw and a failure can be rerun.

What differs from a function exercise (:class:`~.checker.Exercise`), and only this:

* "not attempted" is read from the kernel's *source* (a ``raise NotImplementedError`` in
  its body) before anything launches: a compiled kernel cannot raise.
* Without Triton, or on a CPU without Triton's interpreter, no kernel can run: the check is
  "not attempted", with one line on what to do, and never raises.
* An optional bounds check runs first: one launch into output rows followed by guard bytes,
  so a store that forgets its mask is reported instead of landing in memory we do not own
  (the next row, the CPU heap under the interpreter, or another tensor on a GPU).
* Known mistakes are wrong kernels; the one whose output equals the learner's names the hint.

Hints come in the checker's tiers: the concept (``hint``) with every failure, the matched
wrong kernel's hint, and the code-level help (``code_hint``) only after repeated failures:
:meth:`~.checker.Exercise.check` adds it, for every verdict the hooks below produce.

The verdicts, hints and progress records are the checker's own. The kernels, their cases
and their mistakes load on first use (:class:`KernelSpec`), so importing the exercises does
not import Triton.
"""

from __future__ import annotations

import ast
import inspect
import random
import textwrap
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .checker import ICONS, Exercise, Mistake, _short, not_attempted_message


@dataclass
class KernelSpec:
    """Everything the grade needs from a kernel file (loaded when first checked)."""

    kernel: Any  # the reference @jit kernel: the solution
    expected: Callable[..., Any]  # the PyTorch reference every case is held to
    launch: Callable[..., Any]  # launch(kernel, *case.args, **case.kwargs): the file's wrapper
    cases: Callable[[int, torch.device], list]  # (seed, device) -> kernels.check.Case list
    mistakes: list[Mistake]  # Mistake.fn is a wrong @jit kernel
    bounds: Callable[[Any, torch.device], int] | None = None  # guard bytes a kernel overwrote
    bounds_case: str = ""  # the input the bounds check launches, as the verdict names it


@dataclass
class Graded:
    """One case of one check: the kernel file's Case, its expected output, the seed."""

    case: Any
    want: Any
    seed: int


def is_stub(fn: Any) -> bool:
    """True when the body of ``fn`` (a jit kernel or a plain function) raises
    NotImplementedError: the shipped stub, read from its source without running it."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(fn, "fn", fn))))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def _same(a: Any, b: Any, atol: float, rtol: float) -> bool:
    """Equal outputs, NaN where NaN (two kernels that overflow the same way match)."""
    a, b = (x if isinstance(x, tuple) else (x,) for x in (a, b))
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), atol=atol, rtol=rtol,
                                              equal_nan=True) for x, y in zip(a, b))


class KernelExercise(Exercise):
    """An exercise whose answer is a ``@jit`` kernel (see the module docstring)."""

    noun = "kernel"

    def __init__(self, name: str, lab: str, load: Callable[[], KernelSpec], hint: str,
                 bounds_hint: str = "", code_hint: str = "", kind: str = "technique"):
        self.name, self.lab, self.load, self.hint = name, lab, load, hint
        self.bounds_hint = bounds_hint  # shown when the bounds check fails
        # Tier 3, shown by Exercise.check after CODE_HINT_AFTER failed checks (the progress
        # store counts them); a kernel is the method itself, so every one is a technique.
        self.code_hint, self.kind = code_hint, kind
        self.random_case, self.n_random, self.rtol, self.atol = None, 0, 0.0, 0.0
        self._spec: KernelSpec | None = None
        self._mistake_in_bounds: dict[str, bool] = {}

    @property
    def spec(self) -> KernelSpec:
        if self._spec is None:
            self._spec = self.load()
        return self._spec

    @property
    def reference(self) -> Any:
        return self.spec.kernel

    @property
    def mistakes(self) -> list[Mistake]:
        return self.spec.mistakes

    @property
    def fixed_cases(self) -> list:  # the kernel file's cases depend on the seed and device
        return []

    @property
    def device(self) -> torch.device:
        from ..kernels.check import device_or_default

        return device_or_default(None)

    def _grade(self, fn: Callable, seed: int | None):
        return super()._grade(fn, random.randrange(2**31) if seed is None else seed)

    def cases(self, seed: int | None = None) -> list[Graded]:
        """The kernel file's cases for ``seed`` on this machine's device, each with the
        reference's answer (computed first: a kernel that writes its input changes nothing)."""
        seed = random.randrange(2**31) if seed is None else seed
        out = []
        for c in self.spec.cases(seed, self.device):
            out.append(Graded(c, self.spec.expected(*c.args, **c.kwargs), seed))
        return out

    def screen(self, fn: Callable) -> tuple[str, str] | None:
        from ..kernels.runtime import HAS_TRITON, INSTALL, backend

        head = f"{ICONS['not attempted']} {self.name}: not attempted"
        if not HAS_TRITON:
            return "not attempted", (f"{head} here: Triton is not installed ({INSTALL}); the "
                                     "lab runs the PyTorch reference meanwhile.")
        if is_stub(fn):
            return "not attempted", not_attempted_message(self.name)
        if not hasattr(fn, "fn"):  # triton.jit objects keep the Python function as .fn
            return "failed", (f"{ICONS['failed']} {self.name}: expected a @triton.jit kernel, "
                              f"got {type(fn).__name__} {getattr(fn, '__name__', '')!r}: put "
                              "@triton.jit on the line above its def.")
        if backend(torch.empty(0, device=self.device)) == "reference":
            return "not attempted", (f"{head} here: no CUDA GPU, and Triton's interpreter is "
                                     "off (TRITON_INTERPRET=1 must be set before triton is "
                                     "imported): restart the kernel and run the lab's first "
                                     "cell first.")
        if self.spec.bounds is not None:
            touched = self._overwrites(fn)
            if touched:
                msg = (f"{ICONS['failed']} {self.name}: your kernel stored outside its rows "
                       f"(bounds check, {self.spec.bounds_case}: {touched} guard bytes after "
                       "the end of a row were overwritten)")
                return "failed", msg + (f"\n   Hint: {self.bounds_hint}" if self.bounds_hint
                                        else "")
        return None

    def _overwrites(self, kernel: Any) -> int:
        """Guard bytes ``kernel`` overwrote in the bounds check (0 when it raised before
        storing anything out of place: its error then shows on the first case)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return self.spec.bounds(kernel, self.device)
        except Exception:  # noqa: BLE001 - reported by the case that raises it again
            return 0

    def describe(self, g: Graded) -> str:
        args = [_short(a) for a in g.case.args if a is not None]
        args += [f"{k}={_short(v)}" for k, v in g.case.kwargs.items()]
        return f"{g.case.name!r} ({', '.join(args)}; seed {g.seed})"

    def _call(self, fn: Callable, g: Graded) -> Any:
        with warnings.catch_warnings():
            # The interpreter's numpy warns when a kernel overflows exp: the verdict says so.
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.spec.launch(fn, *g.case.args, **g.case.kwargs)

    def mismatch(self, g: Graded, got: Any) -> str | None:
        from ..kernels.check import compare

        # check.compare grades one call; here the call has been made, so hand it the answers.
        result = compare(self.name, lambda *a, **k: got, lambda *a, **k: g.want, [g.case]).cases[0]
        if result.ok:
            return None
        if isinstance(got, torch.Tensor) and isinstance(g.want, torch.Tensor) \
                and got.shape == g.want.shape and not torch.isfinite(got).all():
            bad = ~torch.isfinite(got.flatten())
            i = int(bad.nonzero()[0])
            return (f"{int(bad.sum())} of {got.numel()} values are inf or NaN; first at flat "
                    f"index {i}: got {float(got.flatten()[i])}, want "
                    f"{float(g.want.flatten()[i]):.6g}")
        return (f"{result.error} (tolerance: atol {g.case.atol:g} + rtol {g.case.rtol:g} "
                "x |expected|)")

    def diagnose(self, g: Graded, got: Any) -> str | None:
        for m in self.mistakes:
            if self.spec.bounds is not None and not self._mistake_in_bounds.setdefault(
                    m.name, self._overwrites(m.fn) == 0):
                continue  # caught by the bounds check; never launched unguarded
            try:
                if _same(got, self._call(m.fn, g), g.case.atol, g.case.rtol):
                    return m.hint
            except Exception:  # noqa: BLE001, S112 - a mistake that cannot run is no match
                continue
        return None

    def tally(self, cases: list, seed: int | None) -> str:
        from ..kernels.runtime import backend

        where = ("compiled for the GPU" if backend(torch.empty(0, device=self.device))
                 == "triton" else "under Triton's interpreter")
        return f"fixed edge cases and random shapes of seed {seed}, {where}"

    def format_error(self, e: BaseException, fn: Callable) -> str:
        """The error, and the line of the kernel that raised it where the traceback has it
        (the interpreter raises InterpreterError from the kernel's own exception; a
        compiled kernel's CompilationError already quotes the line)."""
        inner = e.__cause__ if e.__cause__ is not None else e
        code = getattr(getattr(fn, "fn", None), "__code__", None)
        where = ""
        for f in traceback.extract_tb(inner.__traceback__):
            if code is not None and (f.filename, f.name) == (code.co_filename, code.co_name):
                where = f" (in {f.name}, line {f.lineno}: {(f.line or '').strip()})"
        # A CompilationError quotes the kernel up to the failing line, the error last.
        lines = str(inner).strip().splitlines()
        text = ("...\n   " if len(lines) > 12 else "") + "\n   ".join(lines[-12:])
        return f"{type(inner).__name__}: {text}{where}"

    def solution(self) -> str:
        fn = getattr(self.reference, "fn", self.reference)
        return (f"# the reference: {fn.__module__}.{fn.__name__}\n"
                + textwrap.dedent(inspect.getsource(fn)))
