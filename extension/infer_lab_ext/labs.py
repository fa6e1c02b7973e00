"""The lab catalogue the navigator shows: each notebook's title, objectives and time.

Every lab notebook opens with the same first markdown cell (DESIGN.md section 4)::

    # Lab 01 · The KV cache
    **What you will learn**
    1. ...
    **Time:** about 40 minutes. ...

so this reads it with a few regular expressions instead of a markdown parser. The
exercises of a lab come from the package's lab catalogue,
:mod:`infer_lab.exercises.catalog`: plain data that imports no torch (which the server
should never pay for), and that the package checks against its exercise modules. A lab
the catalogue does not know falls back to the ``check_<name>(`` calls in its notebook.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from infer_lab.exercises.catalog import LABS

LAB_FILE = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")
TITLE = re.compile(r"^#\s+Lab\s+(\d+)\s*[·:.\-–—]\s*(.+?)\s*$", re.M)
TIME = re.compile(r"\*\*Time:\*\*\s*(?:about|~)?\s*(\d+)\s*min", re.I)
OBJECTIVE = re.compile(r"^\s*\d+\.\s+(.+?)\s*$")
CHECK_CALL = re.compile(r"^\s*check_(\w+)\(", re.M)


def find_labs_dir(root: Path) -> Path | None:
    """``root/labs`` when it holds lab notebooks, else ``root`` itself if it does."""
    for d in (root / "labs", root):
        if d.is_dir() and any(LAB_FILE.match(p.name) for p in d.iterdir()):
            return d
    return None


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def parse_intro(markdown: str) -> dict[str, Any]:
    """Title, objectives and minutes from a lab's first markdown cell (missing: None/[])."""
    title = TITLE.search(markdown)
    minutes = TIME.search(markdown)
    objectives: list[str] = []
    lines = markdown.splitlines()
    start = next((i for i, ln in enumerate(lines) if "what you will learn" in ln.lower()), None)
    if start is not None:
        for ln in lines[start + 1:]:
            m = OBJECTIVE.match(ln)
            if m:
                objectives.append(m.group(1))
            elif objectives and ln.strip():  # the list is over at the first other text
                break
    return {"number": title.group(1) if title else None,
            "title": title.group(2) if title else None,
            "objectives": objectives,
            "minutes": int(minutes.group(1)) if minutes else None}


def read_lab(path: Path) -> dict[str, Any]:
    """One lab's entry (id = file stem); a notebook that does not parse still gets one."""
    lab: dict[str, Any] = {"id": path.stem, "file": path.name, "number": path.name[:2],
                           "title": path.stem[3:].replace("_", " ").capitalize(),
                           "objectives": [], "minutes": None, "checks": []}
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb.get("cells", [])
    except (OSError, ValueError, AttributeError):
        return lab
    intro = next((c for c in cells if c.get("cell_type") == "markdown"), None)
    if intro is not None:
        parsed = parse_intro(_source(intro))
        lab.update({k: v for k, v in parsed.items() if v})
    code = "\n".join(_source(c) for c in cells if c.get("cell_type") == "code")
    lab["checks"] = list(dict.fromkeys(CHECK_CALL.findall(code)))
    return lab


def registry() -> dict[str, list[str]]:
    """{lab id: [exercise names in order]}, from the package's catalogue."""
    return {lab: list(names) for lab, names in LABS.items()}


def catalogue(labs_dir: Path, root: Path) -> list[dict[str, Any]]:
    """Every lab of ``labs_dir`` in order, each with its exercises and its path from root."""
    known = registry()
    labs = []
    for p in sorted(labs_dir.glob("*.ipynb")):
        if not LAB_FILE.match(p.name):
            continue
        lab = read_lab(p)
        lab["exercises"] = known.get(lab["id"], lab.pop("checks"))
        lab.pop("checks", None)
        try:
            lab["path"] = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:  # outside the server's root: listed, but cannot be opened
            lab["path"] = None
        labs.append(lab)
    return labs
