"""A learner's progress as a table, for the instructor: ``python -m infer_lab.progress``.

    python -m infer_lab.progress export                # progress-<learner>.json and .csv
    python -m infer_lab.progress export --learner ana --out /exchange/ana
    python -m infer_lab.progress merge a.json b.json --out class   # class.csv, one table

One row per exercise or prediction a learner touched: lab, kind ("exercise" or
"prediction"), name, status, attempts, failed checks, first attempt, first pass, last
update, and for a prediction the guess and the measured value. ``merge`` reads exported
files (or raw ``progress.json`` stores, named by their folder) and writes every learner's
rows into one CSV, then prints passed counts per learner and lab. The store itself is
:mod:`infer_lab.exercises.progress` (torch-free; so is this).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .exercises import progress as store

COLUMNS = ("learner", "lab", "kind", "name", "status", "attempts", "failures", "first_at",
           "passed_at", "updated", "guess", "measured", "unit")


def default_learner() -> str:
    """JupyterHub's user name where there is one, else the login name."""
    try:
        fallback = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): still export
        fallback = "learner"
    return os.environ.get("JUPYTERHUB_USER") or fallback


def rows(data: dict[str, Any], learner: str) -> list[dict[str, Any]]:
    """The store ``data`` (load_progress's shape) as table rows, labs and names sorted."""
    out = []
    for lab, entry in sorted(data.get("labs", {}).items()):
        for kind, part in (("exercise", "exercises"), ("prediction", "predictions")):
            for name, e in sorted(entry.get(part, {}).items()):
                row = dict.fromkeys(COLUMNS, "")
                row.update(learner=learner, lab=lab, kind=kind, name=name)
                row.update({k: e[k] for k in COLUMNS[4:] if e.get(k) is not None})
                out.append(row)
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write next to ``path`` and swap it in: an interrupted export leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _csv(table: list[dict[str, Any]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def export(out: Path, learner: str, source: Path | None = None) -> tuple[Path, Path]:
    """Write ``out``.json (the rows plus who and when) and ``out``.csv; return both paths."""
    table = rows(store.load_progress(source), learner)
    doc = {"learner": learner, "exported": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "version": store.VERSION, "rows": table}
    js, cs = out.with_name(out.name + ".json"), out.with_name(out.name + ".csv")
    _write_atomic(js, json.dumps(doc, indent=2))
    _write_atomic(cs, _csv(table))
    return js, cs


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an exported file, or of a raw store (the learner named by its folder)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable progress export ({e})") from e
    if isinstance(doc, dict) and isinstance(doc.get("rows"), list):
        return [{k: r.get(k, "") for k in COLUMNS} for r in doc["rows"]]
    if isinstance(doc, dict) and isinstance(doc.get("labs"), dict):
        return rows(doc, path.resolve().parent.name)
    raise ValueError(f"{path}: neither an export (with 'rows') nor a progress store")


def merge(paths: list[Path], out: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """One CSV of every learner's rows; returns it and {learner: {lab: exercises passed}}."""
    table = [r for p in paths for r in read_rows(p)]
    passed: dict[str, dict[str, int]] = {}
    for r in table:
        per = passed.setdefault(r["learner"], {})
        per[r["lab"]] = per.get(r["lab"], 0) + (r["kind"] == "exercise"
                                               and r["status"] == "passed")
    path = out.with_name(out.name + ".csv")
    _write_atomic(path, _csv(table))
    return path, passed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer_lab.progress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="this learner's progress as JSON and CSV")
    ex.add_argument("--learner", default=None, help="name in the table (default: the user)")
    ex.add_argument("--out", type=Path, default=None,
                    help="path prefix of the two files (default: ./progress-<learner>)")
    mg = sub.add_parser("merge", help="many learners' exports into one CSV")
    mg.add_argument("files", nargs="+", type=Path)
    mg.add_argument("--out", type=Path, default=Path("class-progress"))
    args = ap.parse_args(argv)
    if args.command == "export":
        learner = args.learner or default_learner()
        js, cs = export(args.out or Path(f"progress-{learner}"), learner)
        print(f"wrote {js} and {cs} ({len(read_rows(js))} rows) from {store.progress_path()}")
        return 0
    try:
        path, passed = merge(args.files, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labs = sorted({lab for per in passed.values() for lab in per})
    print("exercises passed per learner and lab")
    print(f"{'learner':16s} " + " ".join(f"{lab[:12]:>12s}" for lab in labs))
    for learner, per in sorted(passed.items()):
        print(f"{learner:16s} " + " ".join(f"{per.get(lab, 0):12d}" for lab in labs))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
