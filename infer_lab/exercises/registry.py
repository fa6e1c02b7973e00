"""The exercises themselves: every lab's Exercise objects, by name, and the functions a
lab calls (``check_<name>``, ``show_solution``, ...). Importing this imports torch (the
references and checkers use it); :mod:`infer_lab.exercises` loads it on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from . import (
    applications,
    catalog,
    distillation,
    kernels,
    kv_cache,
    pruning,
    quantization,
    runtimes,
    serving,
    speculative,
    welcome,
)
from .checker import CODE_HINT_AFTER, CheckResult, Exercise
from .predictions import Guess, Prediction
from .progress import lab_predictions, lab_progress

# One module per lab, in lab order; each has LAB (the notebook's name) and EXERCISES.
LAB_MODULES = (welcome, kv_cache, quantization, pruning, distillation, speculative, serving,
               kernels, runtimes, applications)
EXERCISES: dict[str, Exercise] = {e.name: e for m in LAB_MODULES for e in m.EXERCISES}
# The torch-free catalogue (what the JupyterLab extension counts) must say the same.
catalog.check_registry({m.LAB: [e.name for e in m.EXERCISES] for m in LAB_MODULES})
# Predict-then-measure questions (predictions.py), by name; names are unique across labs.
PREDICTIONS: dict[str, Prediction] = {p.name: p for m in LAB_MODULES
                                      for p in getattr(m, "PREDICTIONS", ())}


def exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def check(name: str, fn: Callable, **kw) -> CheckResult:
    """Grade ``fn`` as exercise ``name`` (prints the verdict, records progress)."""
    return exercise(name).check(fn, **kw)


def predict(name: str, guess: float | None, **kw) -> Guess:
    """Record a guess for prediction ``name`` before the cell that measures it; call
    ``.against(measured)`` on the result there."""
    if name not in PREDICTIONS:
        raise ValueError(f"no prediction named {name!r}; predictions are: "
                         f"{', '.join(PREDICTIONS)}")
    return PREDICTIONS[name].predict(guess, **kw)


def show_solution(name: str) -> None:
    """Print the reference implementation of an exercise."""
    print(exercise(name).solution())


def show_hint(name: str) -> None:
    """The concept; the code-level help too once the exercise has failed
    ``CODE_HINT_AFTER`` checks (counted in the progress store)."""
    ex = exercise(name)
    print(f"Hint: {ex.hint}")
    failures = lab_progress(ex.lab).get(name, {}).get("failures", 0)
    if ex.code_hint and isinstance(failures, int) and failures >= CODE_HINT_AFTER:
        print(f"Code-level help: {ex.code_hint}")
    elif ex.code_hint:
        print(f"(Code-level help shows after {CODE_HINT_AFTER} failed checks; "
              f"{failures} so far.)")


def show_progress(lab: str | None = None) -> None:
    """One line per exercise (of one lab, or of all labs) with its recorded status."""
    from .checker import ICONS

    labs = [lab] if lab else sorted({e.lab for e in EXERCISES.values()})
    for lb in labs:
        done = lab_progress(lb)
        print(f"{lb}:")
        for name in catalog.LABS.get(lb, ()):
            entry = done.get(name, {})
            status = entry.get("status", "not attempted")
            tries = entry.get("attempts", 0)
            print(f"  {ICONS.get(status, '?')} {name:28s} {status} "
                  f"({tries} attempt{'' if tries == 1 else 's'})")
        for name, entry in lab_predictions(lb).items():
            status = entry.get("status", "predicted")
            print(f"  {ICONS.get(status, '🔮')} {name:28s} prediction {status}: guessed "
                  f"{entry.get('guess')}, measured {entry.get('measured')} {entry.get('unit', '')}")


def _make_checker(name: str) -> Callable[..., CheckResult]:
    def check_fn(fn: Callable, **kw) -> CheckResult:
        return EXERCISES[name].check(fn, **kw)

    check_fn.__name__ = check_fn.__qualname__ = f"check_{name}"
    check_fn.__doc__ = (f"Grade your ``{name}`` against the reference on fixed and random "
                        "cases; print the verdict and record it.")
    return check_fn


# check_<name> for every exercise, e.g. check_kv_cache_bytes: what the labs import.
CHECKERS = {f"check_{name}": _make_checker(name) for name in EXERCISES}
