"""Reading the learner's progress store for the navigator.

The store's schema, its place and its writer live in :mod:`infer_lab.exercises.progress`
(``$INFER_LAB_HOME/progress.json``, default ``~/.infer_lab``), a torch-free module this
imports for :func:`progress_path`. The server only reads the store, and never repairs or
moves it (as the package's ``load_progress`` does): a missing or unreadable file is shown
as no progress, and the labs themselves deal with a corrupt one the next time a check runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infer_lab.exercises.progress import HOME_VAR, progress_path

__all__ = ["HOME_VAR", "continue_lab", "lab_progress", "progress_path", "read_store"]


def read_store(path: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{lab: {exercise: entry}}; anything unreadable counts as empty."""
    try:
        data = json.loads((path or progress_path()).read_text(encoding="utf-8"))
        labs = data["labs"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    if isinstance(labs, dict):
        for lab, entry in labs.items():
            exercises = entry.get("exercises") if isinstance(entry, dict) else None
            if isinstance(exercises, dict):
                out[lab] = {k: v for k, v in exercises.items() if isinstance(v, dict)}
    return out


def lab_progress(exercises: list[str], recorded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Passed of total for one lab; total is the registry's list, not what was recorded."""
    status = {name: recorded.get(name, {}).get("status", "not attempted") for name in exercises}
    times = [e["updated"] for e in recorded.values() if isinstance(e.get("updated"), str)]
    passed = sum(s == "passed" for s in status.values())
    return {"passed": passed, "total": len(exercises), "status": status,
            "updated": max(times, default=None),
            "complete": bool(exercises) and passed == len(exercises)}


def continue_lab(labs: list[dict[str, Any]]) -> str | None:
    """Where to continue: the most recently worked-on lab that is not complete; with no
    work recorded, the first lab; with every lab complete, None."""
    open_labs = [lab for lab in labs if not lab["progress"]["complete"]]
    touched = [lab for lab in open_labs if lab["progress"]["updated"]]
    if touched:  # ISO 8601 UTC timestamps sort as text
        return max(touched, key=lambda lab: lab["progress"]["updated"])["id"]
    return open_labs[0]["id"] if open_labs else None
