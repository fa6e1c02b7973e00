"""Graded exercises of the labs, and the progress store they write to.

In a lab::

    from infer_lab.exercises import check_kv_cache_bytes, show_solution

    def kv_cache_bytes(cfg, seq_len, batch, bytes_per_elem):
        raise NotImplementedError  # your code here

    check_kv_cache_bytes(kv_cache_bytes)   # ✅ / ❌ with a hint / ⬜ not attempted
    show_solution("kv_cache_bytes")        # the reference, when you are done or stuck

Each lab's exercises live in one module (see ``LAB_MODULES``); every exercise is
reachable as ``check_<name>`` here. See :mod:`.checker` and :mod:`.progress`.

Two parts are torch-free and import nothing heavy: :mod:`.catalog` (which exercises each
lab has) and :mod:`.progress` (the store), which the JupyterLab extension's server
imports. The exercises themselves (:mod:`.registry`: references and checkers, with
torch) load on first use of a name that needs them (PEP 562 ``__getattr__``), so
importing this package, or ``infer_lab.exercises.progress``, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import catalog, progress
from .progress import lab_progress, load_progress, progress_path, summary

# Where the names that need torch live; each is imported from there when first asked for.
_CHECKERS = [f"check_{name}" for names in catalog.LABS.values() for name in names]
_HOMES = {**dict.fromkeys(["Case", "CheckResult", "Exercise", "Mistake", "compare"], "checker"),
          **dict.fromkeys(["EXERCISES", "LAB_MODULES", "CHECKERS", "PREDICTIONS", "predict",
                           "check", "exercise",
                           "show_hint", "show_progress", "show_solution", *_CHECKERS],
                          "registry")}


def lab_exercises(lab: str) -> list[str]:
    """Names of the exercises of one lab, in the order the lab presents them."""
    return list(catalog.LABS.get(lab, ()))


def __getattr__(name: str) -> Any:
    """A name that needs the exercises (and torch), imported on first use; or a submodule."""
    if name in _HOMES:
        home = importlib.import_module(f".{_HOMES[name]}", __name__)
        value = home.CHECKERS[name] if name in _CHECKERS else getattr(home, name)
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "EXERCISES",
    "LAB_MODULES",
    "PREDICTIONS",
    "Case",
    "CheckResult",
    "Exercise",
    "Mistake",
    "check",
    "compare",
    "exercise",
    "lab_exercises",
    "lab_progress",
    "predict",
    "load_progress",
    "progress",
    "progress_path",
    "show_hint",
    "show_progress",
    "show_solution",
    "summary",
    *_CHECKERS,
]
