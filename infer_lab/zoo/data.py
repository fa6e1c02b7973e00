"""The zoo's corpus: the Python standard library's own source, tests included.

Every Python install ships it, so the lab trains and evaluates offline. The split is a
deterministic rule on each file's path relative to the stdlib folder: a file is in the
validation split when the first byte of sha1(path) is below 13 (about 5%), so a
validation file is never trained on, whatever machine or Python version reads it.

Files that only *look* like code are left out: codec tables under ``encodings/``, the
generated documentation strings in ``pydoc_data/``, and any file whose lines are mostly
numeric or hex literals. (A first model trained with them learned to emit hex tables.)
"""

from __future__ import annotations

import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

EXCLUDED_DIRS = ("site-packages", "dist-packages", "encodings", "pydoc_data", "__pycache__")
MAX_FILE_BYTES = 400_000
VALID_HASH_BYTE = 13  # sha1(path)[0] < 13 -> validation (13/256 ~ 5%)
# A line of literals only: digits, hex, commas, brackets, escapes and spaces.
_DATA_LINE = re.compile(r"^[\s0-9a-fA-FxXuU.,+\-()\[\]{}'\"\\:LN]*$")

RULE = ("*.py under the stdlib folder (sysconfig 'stdlib'), minus encodings/, pydoc_data/, "
        "site-packages, files over 400 kB, non-UTF-8 files and files whose non-blank lines "
        "are over 30% numeric/hex literals; validation iff sha1(relative posix path)[0] < 13")


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative posix path inside the stdlib folder
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel_path: str) -> str:
    """'train' or 'valid' for a path relative to the stdlib folder."""
    h = hashlib.sha1(rel_path.encode()).digest()[0]
    return "valid" if h < VALID_HASH_BYTE else "train"


def looks_like_data(text: str) -> bool:
    """True when over 30% of non-blank lines are bare numeric or hex literals."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return True
    data = sum(1 for ln in lines if _DATA_LINE.match(ln) and any(c.isdigit() for c in ln))
    return data / len(lines) > 0.30


def iter_files(split: str, root: Path | None = None) -> list[SourceFile]:
    """All kept source files of a split ('train' or 'valid'), sorted by path."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    root = root or stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if any(part in EXCLUDED_DIRS for part in rel.split("/")[:-1]):
            continue
        if split_of(rel) != split or p.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if looks_like_data(text):
            continue
        out.append(SourceFile(rel, text))
    return out


def held_out_text(max_chars: int | None = None) -> str:
    """Validation files joined with blank lines, optionally cut to ``max_chars``."""
    text = "\n\n".join(f.text for f in iter_files("valid"))
    return text[:max_chars] if max_chars else text


# -- prompts cut from the held-out files (lab 05 and ``python -m infer_lab.bench speculative``)
EDIT_HEADER = "# Original version:\n"
EDIT_MIDDLE = "\n\n# The same code, with the comments removed:\n"


def held_out_prompts(tok, n: int, chars: int) -> list[list[int]]:
    """The first ``chars`` characters of the first ``n`` held-out files (of those longer
    than 2 x ``chars``), encoded by ``tok``."""
    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    return [tok.encode(f.text[:chars]) for f in files]


def edit_prompts(tok, n: int, chars: int) -> list[list[int]]:
    """Code followed by the start of its rewrite: the continuation mostly repeats it."""
    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    out = []
    for f in files:
        code = f.text[:chars]
        out.append(tok.encode(EDIT_HEADER + code + EDIT_MIDDLE + code[:40]))
    return out
