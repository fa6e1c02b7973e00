"""The progress store: which exercises a learner has passed, in one small JSON file.

Where: ``$INFER_LAB_HOME/progress.json``, by default ``~/.infer_lab/progress.json``.

Schema (version 1), read by the labs and by the JupyterLab extension::

    {
      "version": 1,
      "labs": {
        "01_kv_cache": {
          "exercises": {
            "kv_cache_bytes": {
              "status": "passed",          # "passed" | "failed" | "not attempted"
              "attempts": 3,               # checks that ran the learner's code
              "failures": 2,               # of which failed (the code-level hint's count)
              "first_at": "2025-01-31T11:50:00+00:00",  # first real attempt (UTC)
              "updated": "2025-01-31T12:00:00+00:00",   # last check (UTC, ISO 8601)
              "passed_at": "2025-01-31T11:58:00+00:00", # first pass, or null
              "message": "passed 24/24 cases"           # the last verdict, one line
            }
          },
          "predictions": {
            "decode_tokens_per_s": {
              "status": "passed",          # "passed" | "failed" | "predicted" (not yet measured)
              "guess": 120.0, "measured": 131.2, "unit": "tokens/s",
              "tolerance": "within 50%", "attempts": 1, "updated": "..."
            }
          }
        }
      }
    }

Rules that keep a lab running whatever happens to the file:

* a missing file is an empty store;
* a file that is not valid JSON of this shape is moved aside to
  ``progress.json.corrupt`` (then ``.corrupt.1``, ``.corrupt.2``, ...: a backup is
  never overwritten) with a warning, and the store starts empty;
* writes go to a temporary file in the same folder, then ``os.replace`` swaps it in,
  so a crash mid-write leaves the old file whole;
* a write that fails (read-only home, full disk) warns and carries on.

"not attempted" (a stub that still raises ``NotImplementedError``) never overwrites a
record of real attempts: re-running a fresh copy of a notebook does not erase a pass.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

VERSION = 1
STATUSES = ("passed", "failed", "not attempted")
HOME_VAR = "INFER_LAB_HOME"


def progress_path() -> Path:
    """``$INFER_LAB_HOME/progress.json`` (default home: ``~/.infer_lab``)."""
    home = os.environ.get(HOME_VAR) or Path.home() / ".infer_lab"
    return Path(home) / "progress.json"


def empty() -> dict[str, Any]:
    return {"version": VERSION, "labs": {}}


def _valid(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("labs"), dict):
        return False
    for lab in data["labs"].values():
        if not isinstance(lab, dict) or not isinstance(lab.get("exercises", {}), dict):
            return False
        for part in ("exercises", "predictions"):
            if not isinstance(lab.get(part, {}), dict):
                return False
            if not all(isinstance(e, dict) for e in lab.get(part, {}).values()):
                return False
    return True


def load_progress(path: Path | None = None) -> dict[str, Any]:
    """The whole store; never raises (missing -> empty, corrupt -> set aside, empty)."""
    path = Path(path) if path is not None else progress_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return empty()
    except OSError as e:
        warnings.warn(f"cannot read progress file {path}: {e}; starting empty", stacklevel=2)
        return empty()
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        data = None
    if not _valid(data):
        try:
            where = f"moved to {move_aside(path)}"
        except OSError as e:
            where = f"could not move it aside ({e})"
        warnings.warn(f"progress file {path} was not valid progress JSON; {where}. "
                      "Starting with empty progress.", stacklevel=2)
        return empty()
    data.setdefault("version", VERSION)
    return data


def move_aside(path: Path, suffix: str = ".corrupt") -> Path:
    """Rename ``path`` to the first free ``path + suffix[.N]``; never overwrites a file.

    A hard link claims the new name atomically (it fails if the name exists), so two
    kernels setting aside two corrupt files at once cannot both take one name.
    """
    for n in range(10_000):
        backup = path.with_name(path.name + suffix + (f".{n}" if n else ""))
        try:
            os.link(path, backup)
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network file systems): check, rename
            if backup.exists():
                continue
            os.rename(path, backup)
            return backup
        os.unlink(path)
        return backup
    raise OSError(f"too many backups of {path}; remove old {path.name}{suffix}.* files")


def save_progress(data: dict[str, Any], path: Path | None = None) -> bool:
    """Write the store atomically; True on success, a warning (no exception) on failure."""
    path = Path(path) if path is not None else progress_path()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".progress-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see old or new
        return True
    except OSError as e:
        warnings.warn(f"could not save progress to {path}: {e}", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(lab: str, exercise: str, status: str, message: str = "",
           path: Path | None = None) -> dict[str, Any]:
    """Record one check's verdict and return the exercise's updated entry."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    data = load_progress(path)
    lab_entry = data["labs"].setdefault(lab, {})
    exercises = lab_entry.setdefault("exercises", {})
    entry = exercises.get(exercise, {})
    attempts, failures = (_count(entry, k) for k in ("attempts", "failures"))
    if status == "not attempted" and attempts > 0:
        return entry  # a fresh stub must not erase earlier work
    now = _now()
    entry = {
        "status": status,
        "attempts": attempts + (status != "not attempted"),
        "failures": failures + (status == "failed"),
        "first_at": entry.get("first_at") or (now if status != "not attempted" else None),
        "updated": now,
        "passed_at": entry.get("passed_at") or (now if status == "passed" else None),
        "message": message,
    }
    exercises[exercise] = entry
    save_progress(data, path)
    return entry


def _count(entry: dict[str, Any], key: str) -> int:
    value = entry.get(key, 0)
    return value if isinstance(value, int) and value >= 0 else 0


PREDICTION_STATUSES = ("passed", "failed", "predicted")


def record_prediction(lab: str, name: str, status: str, guess: float,
                      measured: float | None, unit: str, tolerance: str,
                      path: Path | None = None) -> dict[str, Any]:
    """Record a prediction: ``status`` "predicted" when the guess is made (before the
    measurement), then "passed" or "failed" once the measured value is known."""
    if status not in PREDICTION_STATUSES:
        raise ValueError(f"status must be one of {PREDICTION_STATUSES}, got {status!r}")
    data = load_progress(path)
    preds = data["labs"].setdefault(lab, {}).setdefault("predictions", {})
    entry = preds.get(name, {})
    graded = status != "predicted"
    entry = {"status": status, "guess": float(guess),
             "measured": None if measured is None else float(measured), "unit": unit,
             "tolerance": tolerance, "attempts": _count(entry, "attempts") + graded,
             "first_at": entry.get("first_at") or _now(), "updated": _now()}
    preds[name] = entry
    save_progress(data, path)
    return entry


def lab_predictions(lab: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """{prediction name: entry} of one lab."""
    return dict(load_progress(path)["labs"].get(lab, {}).get("predictions", {}))


def lab_progress(lab: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """{exercise name: entry} of one lab (empty when nothing was recorded)."""
    return dict(load_progress(path)["labs"].get(lab, {}).get("exercises", {}))


def summary(path: Path | None = None) -> dict[str, dict[str, int]]:
    """{lab: {"passed": n, "failed": n, "not attempted": n, "total": n}} over recorded work."""
    out = {}
    for lab, entry in sorted(load_progress(path)["labs"].items()):
        counts = {s: 0 for s in STATUSES}
        for ex in entry.get("exercises", {}).values():
            status = ex.get("status")
            counts[status if status in counts else "not attempted"] += 1
        counts["total"] = sum(counts.values())
        out[lab] = counts
    return out


def reset(lab: str | None = None, path: Path | None = None) -> None:
    """Forget the progress of one lab, or of every lab."""
    data = load_progress(path)
    if lab is None:
        data = empty()
    else:
        data["labs"].pop(lab, None)
    save_progress(data, path)
