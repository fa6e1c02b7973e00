"""One rule per parameter, shared by the Python API and the HTTP server.

Every public entry point (``generate``, ``speculative_decode``, ``Engine.add_request``,
the quantizers, ``POST /v1/completions``) checks its arguments with these functions, so
a value is accepted or refused the same way whichever door it comes through, and the
message says what was expected:

* numbers must be finite: ``NaN`` and ``inf`` pass every ``<`` test the wrong way, so
  they are refused by name instead of slipping through a range check;
* integers must be integers: ``2.5`` or ``True`` is refused, never truncated;
* token ids are integers in ``[0, vocab_size)``, prompts non-empty lists of them, and a
  batch is a list of prompts (a flat list is refused with the fix spelled out).

Plain Python, no torch: the server's schema and the serving scheduler import it freely.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

__all__ = ["integer", "number", "flag", "token_ids", "prompt_batch"]


def _kind(value: Any) -> str:
    return type(value).__name__


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi]; refuses bools, floats (even 3.0) and strings.

    Anything with ``__index__`` (numpy and 0-d torch integers) counts as an integer.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got the boolean {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r} ({_kind(value)})") from None
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi] with ``lo_open``)."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise ValueError(f"{name} must be a number, got {value!r} ({_kind(value)})")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def flag(name: str, value: Any) -> bool:
    """A real boolean: the string ``"false"`` is not False, and 0/1 are not flags."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({_kind(value)})")
    return value


def token_ids(name: str, ids: Any, vocab_size: int) -> list[int]:
    """One prompt: a non-empty sequence of int token ids in [0, vocab_size)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) and not hasattr(
            ids, "tolist"):
        raise ValueError(f"{name} must be a list of token ids (ints), got {_kind(ids)}")
    if hasattr(ids, "tolist") and not isinstance(ids, Sequence):  # a tensor or an array
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"{name} must be 1-d (one prompt), got shape "
                             f"{tuple(ids.shape)}")
        ids = ids.tolist()
    if len(ids) == 0:
        raise ValueError(f"empty prompt ({name}): give at least one token (e.g. a newline)")
    out = []
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not hasattr(t, "__index__"):
            hint = " (token ids are never rounded)" if isinstance(t, float) else ""
            raise ValueError(f"{name}[{i}] must be an integer token id, got {t!r} "
                             f"({_kind(t)}){hint}")
        t = operator.index(t)
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name}[{i}] = {t} is outside the vocabulary: token ids "
                             f"must be in [0, {vocab_size})")
        out.append(t)
    return out


def prompt_batch(prompts: Any, vocab_size: int) -> list[list[int]]:
    """A batch: a non-empty list of prompts, each a list of token ids.

    A flat list of ints (one prompt without its batch brackets) is the common slip; the
    message says to wrap it.
    """
    if hasattr(prompts, "tolist") and not isinstance(prompts, Sequence):
        if getattr(prompts, "ndim", 2) != 2:
            raise ValueError(f"prompts must be 2-d (batch, tokens), got shape "
                             f"{tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of prompts (a list of lists of token "
                         f"ids), got {_kind(prompts)}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    if all(isinstance(p, int) or hasattr(p, "__index__") and not isinstance(p, Sequence)
           for p in prompts):
        raise ValueError("prompts must be a list of prompts, each a list of token ids; "
                         "got a flat list of ints: for one prompt write [ids]")
    return [token_ids(f"prompts[{b}]", p, vocab_size) for b, p in enumerate(prompts)]
