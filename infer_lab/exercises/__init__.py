"""Graded exercises of the labs, and the progress store they write to.

In a lab::

    from infer_lab.exercises import check_kv_cache_bytes, show_solution

    def kv_cache_bytes(cfg, seq_len, batch, bytes_per_elem):
        raise NotImplementedError  # your code here

    check_kv_cache_bytes(kv_cache_bytes)   # ✅ / ❌ with a hint / ⬜ not attempted
    show_solution("kv_cache_bytes")        # the reference, when you are done or stuck

Each lab's exercises live in one module (see ``LAB_MODULES``); every exercise is
reachable as ``check_<name>`` here. See :mod:`.checker` and :mod:`.progress`.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    distillation,
    kv_cache,
    progress,
    pruning,
    quantization,
    serving,
    speculative,
    welcome,
)
from .checker import Case, CheckResult, Exercise, Mistake, compare
from .progress import lab_progress, load_progress, progress_path, summary

# One module per lab, in lab order; each has LAB (the notebook's name) and EXERCISES.
LAB_MODULES = (welcome, kv_cache, quantization, pruning, distillation, speculative, serving)
EXERCISES: dict[str, Exercise] = {e.name: e for m in LAB_MODULES for e in m.EXERCISES}


def exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def check(name: str, fn: Callable, **kw) -> CheckResult:
    """Grade ``fn`` as exercise ``name`` (prints the verdict, records progress)."""
    return exercise(name).check(fn, **kw)


def show_solution(name: str) -> None:
    """Print the reference implementation of an exercise."""
    print(exercise(name).solution())


def show_hint(name: str) -> None:
    print(f"Hint: {exercise(name).hint}")


def lab_exercises(lab: str) -> list[str]:
    """Names of the exercises of one lab, in the order the lab presents them."""
    return [n for n, e in EXERCISES.items() if e.lab == lab]


def show_progress(lab: str | None = None) -> None:
    """One line per exercise (of one lab, or of all labs) with its recorded status."""
    from .checker import ICONS

    labs = [lab] if lab else sorted({e.lab for e in EXERCISES.values()})
    for lb in labs:
        done = lab_progress(lb)
        print(f"{lb}:")
        for name in lab_exercises(lb):
            entry = done.get(name, {})
            status = entry.get("status", "not attempted")
            tries = entry.get("attempts", 0)
            print(f"  {ICONS.get(status, '?')} {name:28s} {status} "
                  f"({tries} attempt{'' if tries == 1 else 's'})")


def _make_checker(name: str) -> Callable[..., CheckResult]:
    def check_fn(fn: Callable, **kw) -> CheckResult:
        return EXERCISES[name].check(fn, **kw)

    check_fn.__name__ = check_fn.__qualname__ = f"check_{name}"
    check_fn.__doc__ = (f"Grade your ``{name}`` against the reference on fixed and random "
                        "cases; print the verdict and record it.")
    return check_fn


# check_<name> for every exercise, e.g. check_kv_cache_bytes: what the labs import.
CHECKERS = {f"check_{name}": _make_checker(name) for name in EXERCISES}
globals().update(CHECKERS)

__all__ = [
    "EXERCISES",
    "LAB_MODULES",
    "Case",
    "CheckResult",
    "Exercise",
    "Mistake",
    "check",
    "compare",
    "exercise",
    "lab_exercises",
    "lab_progress",
    "load_progress",
    "progress",
    "progress_path",
    "show_hint",
    "show_progress",
    "show_solution",
    "summary",
    *CHECKERS,
]
