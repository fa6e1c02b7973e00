"""Grade a learner's function against a reference implementation.

An :class:`Exercise` holds a reference function, fixed cases (edge cases chosen by
hand) and a generator of random cases. ``exercise.check(fn)`` runs both functions on
every case, compares the answers within a tolerance and prints one verdict:

    ✅ kv_cache_bytes: passed 24/24 cases.
    ❌ kv_cache_bytes: wrong answer on case 2/24: kv_cache_bytes(cfg=<llama-3-8b>, ...)
       expected 1073741824, got 536870912
       Hint: K and V are two tensors: ...
    ⬜ kv_cache_bytes: not attempted (the stub still raises NotImplementedError).

Known mistakes are registered with the exercise as small wrong functions; when the
learner's answer equals a known mistake's, the verdict shows that mistake's hint. The
same functions let the tests prove that the checker rejects them.

Hints come in three tiers: every failed verdict gives the *concept* (``hint``, which never
spells out the code) and, when the answer matches a registered mistake, that mistake's
hint; only after ``CODE_HINT_AFTER`` failed checks of the same exercise (counted in the
progress store) does it add the code-level help (``code_hint``).

Dtypes and shapes are part of the answer: a float tensor where the reference returns
uint8 codes fails, as does an int64 one (``exact_dtype``).

Once an exercise passes, the lab runs the learner's function: ``result.choose(fn)`` is
``fn`` when the check passed, else the reference, and says which in one line.

A stub that raises ``NotImplementedError`` is "not attempted" and never raises, so a lab
runs top to bottom as shipped. Every verdict is recorded in the progress store.

A variant grades something other than a plain function (:mod:`.kernel_checker`: a Triton
kernel, launched by its wrapper) by overriding the hooks ``screen``, ``describe``,
``mismatch``, ``tally``, ``format_error`` and ``diagnose``; the verdicts and the progress
record stay here, one copy for every kind of exercise.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import progress

ICONS = {"passed": "✅", "failed": "❌", "not attempted": "⬜"}
CODE_HINT_AFTER = 3  # failed checks of one exercise before the code-level hint shows


@dataclass
class Case:
    """Arguments of one call: ``fn(*args, **kwargs)``."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self, name: str) -> str:
        parts = [_short(a) for a in self.args] + [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        return f"{name}({', '.join(parts)})"


@dataclass
class Mistake:
    """A plausible wrong answer and the hint that fixes it."""

    name: str
    fn: Callable
    hint: str


@dataclass
class CheckResult:
    """What a check found. Truthy when passed."""

    exercise: str
    lab: str
    status: str  # "passed" | "failed" | "not attempted"
    message: str  # the full verdict printed to the learner
    n_cases: int = 0
    n_passed: int = 0
    failed_case: str | None = None  # description of the first failing call
    error: str | None = None  # the exception the learner's code raised, if any
    hint: str | None = None  # the most specific hint: the matched mistake's, else the concept
    mistake: str | None = None  # the name of the registered mistake the answer matched
    reference: Callable | None = field(default=None, repr=False)

    def choose(self, fn: Callable, *, verbose: bool = True) -> Callable:
        """The function the lab's next experiment runs: ``fn`` once it passed, else the
        reference (said in one line, so a learner knows whose code made the numbers)."""
        if self.passed or self.reference is None:
            if verbose:
                print(f"The experiments below run your {self.exercise}.")
            return fn
        if verbose:
            why = "is not attempted yet" if self.status == "not attempted" else "has not passed"
            print(f"Your {self.exercise} {why}: the experiments below run the reference "
                  f"(show_solution({self.exercise!r}) prints it).")
        return self.reference

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"<CheckResult {self.exercise}: {self.status}, {self.n_passed}/{self.n_cases} cases>"

    def _ipython_display_(self) -> None:
        """Show nothing: the check already printed the verdict (``print(result)`` repeats it).

        Without this, a cell ending in ``check_x(x)`` would echo the result's repr below
        the verdict.
        """


def _short(x: Any) -> str:
    """A readable, one-line repr of an argument (tensors by shape, configs by name)."""
    if isinstance(x, torch.Tensor):
        return f"<tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}>"
    name = getattr(x, "_preset_name", None)
    if name:
        return f"<{name}>"
    if type(x).__name__ == "ModelConfig":
        return (f"<ModelConfig n_layer={x.n_layer} n_head={x.n_head} n_kv_head={x.n_kv_head} "
                f"head_dim={x.head_dim}>")
    if isinstance(x, float):
        return f"{x:.6g}"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def compare(got: Any, want: Any, rtol: float = 1e-6, atol: float = 0.0,
            exact_dtype: bool = True) -> str | None:
    """None when ``got`` matches ``want``; else a short reason why not.

    Tensors must match in shape and (with ``exact_dtype``) in dtype: packed uint8 codes
    returned as int64, or a float mask, are wrong answers even when the values agree.
    """
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor of shape {tuple(want.shape)}, got {type(got).__name__}"
        if got.shape != want.shape:
            return f"expected shape {tuple(want.shape)}, got shape {tuple(got.shape)}"
        if exact_dtype and got.dtype != want.dtype:
            return (f"expected dtype {str(want.dtype).replace('torch.', '')}, got "
                    f"{str(got.dtype).replace('torch.', '')} (the dtype is part of the answer)")
        if want.dtype == torch.bool:
            if got.dtype != torch.bool:
                return f"expected a bool tensor, got dtype {got.dtype}"
            bad = (got != want).nonzero()
            if len(bad):
                i = tuple(bad[0].tolist())
                return (f"{len(bad)} of {want.numel()} entries differ; first at index {i}: "
                        f"expected {bool(want[i])}, got {bool(got[i])}")
            return None
        if not torch.is_floating_point(got) and torch.is_floating_point(want):
            got = got.to(want.dtype)
        g, w = got.detach().double().cpu(), want.detach().double().cpu()
        if torch.isnan(g).any() and not torch.isnan(w).any():
            return "your answer contains NaN"
        if not torch.allclose(g, w, rtol=rtol, atol=atol):
            err = (g - w).abs()
            i = tuple(int(j) for j in torch.unravel_index(err.argmax(), err.shape))
            return (f"values differ; largest error at index {i}: expected {w[i].item():.6g}, "
                    f"got {g[i].item():.6g}")
        return None
    if isinstance(want, numbers.Real) and not isinstance(want, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            return f"expected a number, got {type(got).__name__}: {_short(got)}"
        if math.isnan(float(got)):
            return "expected a number, got nan"
        if not math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=atol):
            return f"expected {float(want):.6g}, got {float(got):.6g}"
        return None
    return None if got == want else f"expected {_short(want)}, got {_short(got)}"


@dataclass
class Exercise:
    """One graded exercise of a lab."""

    name: str
    lab: str
    reference: Callable
    fixed_cases: list[Case]
    random_case: Callable[[random.Random], Case] | None = None
    n_random: int = 20
    hint: str = ""  # the concept: shown with every failure, never the code
    mistakes: list[Mistake] = field(default_factory=list)
    rtol: float = 1e-6
    atol: float = 0.0
    code_hint: str = ""  # code-level help, shown after CODE_HINT_AFTER failed checks
    exact_dtype: bool = True
    kind: str = "warm-up"  # "technique": the learner builds the method; "warm-up": a formula

    def cases(self, seed: int | None = None) -> list[Case]:
        """The fixed cases, then ``n_random`` random ones (a fresh draw unless seeded)."""
        rng = random.Random(seed)
        rand = [self.random_case(rng) for _ in range(self.n_random)] if self.random_case else []
        return list(self.fixed_cases) + rand

    def check(self, fn: Callable, *, seed: int | None = None, verbose: bool = True,
              record: bool = True) -> CheckResult:
        """Grade ``fn``; record the verdict in the progress store and print it (with the
        code-level hint once this exercise has failed ``CODE_HINT_AFTER`` times)."""
        result = self._grade(fn, seed)
        result.reference = self.reference
        if record:
            entry = progress.record(self.lab, self.name, result.status,
                                    result.message.splitlines()[0])
            failures = entry.get("failures", 0) if result.status == "failed" else 0
            if failures >= CODE_HINT_AFTER and self.code_hint:
                result.message += (f"\n   Code-level help (after {failures} failed checks): "
                                   f"{self.code_hint}")
        if verbose:
            print(result.message)
        return result

    def _call(self, fn: Callable, case: Case) -> Any:
        # Deep copies: a function that modifies its inputs must not change the reference's.
        return fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))

    # What a variant of Exercise changes (a kernel exercise: kernel_checker.py); the
    # verdicts below are built in one place for every kind of exercise.
    noun = "function"  # what the learner hands in, as the verdicts name it

    def screen(self, fn: Callable) -> tuple[str, str] | None:
        """(status, message) when ``fn`` cannot be graded at all, before any case runs."""
        if not callable(fn):
            return "failed", (f"{ICONS['failed']} {self.name}: expected a function, got "
                              f"{type(fn).__name__}. Pass the function itself, without "
                              "calling it.")
        return None

    def describe(self, case: Any) -> str:
        """The call of one case, as the verdict shows it."""
        return case.describe(self.name)

    def mismatch(self, case: Any, got: Any) -> str | None:
        """None when ``got`` is right for ``case``; else why not."""
        return compare(got, self._call(self.reference, case), self.rtol, self.atol,
                       self.exact_dtype)

    def tally(self, cases: list, seed: int | None) -> str:
        """What the passed cases were, for the verdict."""
        fixed = len(self.fixed_cases)
        return f"{fixed} fixed, {len(cases) - fixed} random"

    def format_error(self, e: BaseException, fn: Callable) -> str:
        return _format_error(e)

    def _grade(self, fn: Callable, seed: int | None) -> CheckResult:
        cases = self.cases(seed)
        n = len(cases)
        make = lambda status, msg, k=0, **kw: CheckResult(
            self.name, self.lab, status, msg, n, k, **kw)
        early = self.screen(fn)
        if early is not None:
            return make(*early)
        for k, case in enumerate(cases):
            call = self.describe(case)
            try:
                got = self._call(fn, case)
            except NotImplementedError:
                if k == 0:
                    return make("not attempted", not_attempted_message(self.name))
                return make("failed", f"{ICONS['failed']} {self.name}: raised "
                            f"NotImplementedError on case {k + 1}/{n}: {call}", k,
                            failed_case=call, hint=self.hint)
            except Exception as e:  # noqa: BLE001  the learner's bug: show it, never raise
                err = self.format_error(e, fn)
                msg = (f"{ICONS['failed']} {self.name}: your {self.noun} raised an error on "
                       f"case {k + 1}/{n}: {call}\n   {err}")
                if self.hint:
                    msg += f"\n   Hint: {self.hint}"
                return make("failed", msg, k, failed_case=call, error=err, hint=self.hint)
            reason = self.mismatch(case, got)
            if reason is not None:
                specific = self.diagnose(case, got)
                msg = (f"{ICONS['failed']} {self.name}: wrong answer on case {k + 1}/{n}: "
                       f"{call}\n   {reason}")
                if self.hint:
                    msg += f"\n   Hint: {self.hint}"
                if specific and specific != self.hint:
                    msg += f"\n   Your answer matches a known mistake: {specific}"
                mistake = next((m.name for m in self.mistakes if m.hint == specific), None)
                return make("failed", msg, k, failed_case=call, hint=specific or self.hint,
                            mistake=mistake)
        return make("passed", f"{ICONS['passed']} {self.name}: passed {n}/{n} cases "
                    f"({self.tally(cases, seed)}).", n)

    def diagnose(self, case: Case, got: Any) -> str | None:
        """The hint of the first known mistake whose answer equals ``got`` on ``case``."""
        for m in self.mistakes:
            try:
                if compare(got, self._call(m.fn, case), self.rtol, self.atol,
                       self.exact_dtype) is None:
                    return m.hint
            except Exception:  # noqa: BLE001, S112  a mistake that cannot run is no match
                continue
        return None

    def solution(self) -> str:
        return inspect.getsource(self.reference)


def not_attempted_message(name: str) -> str:
    return (f"{ICONS['not attempted']} {name}: not attempted (the stub still raises "
            "NotImplementedError). Replace the `raise` with your code and run the cell again.")


def _format_error(e: BaseException) -> str:
    """``Type: message`` plus the line of the learner's code that raised it."""
    tb = traceback.extract_tb(e.__traceback__)
    here = __file__.rsplit(".", 1)[0]
    frames = [f for f in tb if not f.filename.startswith(here)]
    where = ""
    if frames:
        f = frames[-1]
        code = f": {f.line.strip()}" if f.line else ""
        where = f" (in {f.name}, line {f.lineno}{code})"
    return f"{type(e).__name__}: {e}{where}"
