"""Predict, then measure: a learner commits to a number before the cell that measures it.

A lab asks the question, the learner writes a guess, and the guess is recorded *before*
the measurement runs (so a re-run after seeing the answer shows up as a second attempt).
The measuring cell then grades it within the prediction's stated tolerance::

    guess = None  # your prediction, in tokens/s
    p = predict("code_m_decode_tokens_per_s", guess)
    ...                                   # the cell that measures
    p.against(measured)                   # ✅ / ❌ with the explanation, recorded

Each lab module lists its predictions as ``PREDICTIONS`` beside its ``EXERCISES``; the
tolerance is part of the question (a learner is told how close is close enough), and it
is wide where the machine decides the number (a bandwidth), narrow where arithmetic does.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from . import progress
from .checker import ICONS, CheckResult


@dataclass
class Prediction:
    """One question whose answer the next cell measures."""

    name: str
    lab: str
    question: str  # what to predict, as the lab asks it
    unit: str
    rel_tol: float | None = None  # passed when |guess - measured| <= rel_tol * |measured|
    abs_tol: float | None = None  # ... or <= abs_tol (either suffices when both are set)
    explain: str = ""  # why the number is what it is: shown once it is measured

    def __post_init__(self) -> None:
        if self.rel_tol is None and self.abs_tol is None:
            raise ValueError(f"prediction {self.name!r} needs rel_tol or abs_tol")

    @property
    def tolerance(self) -> str:
        parts = []
        if self.rel_tol is not None:
            parts.append(f"within {self.rel_tol:.0%} of the measured value")
        if self.abs_tol is not None:
            parts.append(f"within ±{self.abs_tol:g} {self.unit}")
        return " or ".join(parts)

    def close_enough(self, guess: float, measured: float) -> bool:
        err = abs(guess - measured)
        return ((self.rel_tol is not None and err <= self.rel_tol * abs(measured))
                or (self.abs_tol is not None and err <= self.abs_tol))

    def predict(self, guess: float | None, *, verbose: bool = True,
                record: bool = True) -> Guess:
        """Commit to ``guess`` (None: no prediction made yet) before the measurement."""
        if guess is not None and (not isinstance(guess, numbers.Real) or isinstance(guess, bool)
                                  or not math.isfinite(float(guess))):
            raise ValueError(f"a prediction is a finite number (in {self.unit}); got "
                             f"{guess!r}")
        if verbose:
            if guess is None:
                print(f"{ICONS['not attempted']} {self.name}: no prediction yet. Set your "
                      f"guess (in {self.unit}) and run this cell again before the next one.")
            else:
                print(f"Recorded your prediction: {float(guess):g} {self.unit}. Passing means "
                      f"{self.tolerance}; the next cell measures it.")
        if record and guess is not None:
            progress.record_prediction(self.lab, self.name, "predicted", float(guess), None,
                                       self.unit, self.tolerance)
        return Guess(self, None if guess is None else float(guess), record)


@dataclass
class Guess:
    """A recorded guess, waiting for its measurement."""

    prediction: Prediction
    value: float | None
    record: bool = True

    def against(self, measured: float, *, verbose: bool = True) -> CheckResult:
        """Grade the guess against the measured value; print and record the verdict."""
        p, measured = self.prediction, float(measured)
        if not math.isfinite(measured):
            raise ValueError(f"{p.name}: the measurement is {measured}, not a number to "
                             "grade against")
        shown = f"measured {measured:.4g} {p.unit}"
        if self.value is None:
            status = "not attempted"
            msg = f"{ICONS[status]} {p.name}: no prediction was made; {shown}."
        else:
            status = "passed" if p.close_enough(self.value, measured) else "failed"
            off = abs(self.value - measured) / abs(measured) if measured else math.inf
            msg = (f"{ICONS[status]} {p.name}: you predicted {self.value:.4g}, {shown} "
                   f"({off:.0%} off; passing is {p.tolerance}).")
            if self.record:
                progress.record_prediction(p.lab, p.name, status, self.value, measured,
                                           p.unit, p.tolerance)
        if p.explain:
            msg += f"\n   Why: {p.explain}"
        if verbose:
            print(msg)
        return CheckResult(p.name, p.lab, status, msg, 1, int(status == "passed"))
