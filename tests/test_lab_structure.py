"""Every lab follows the exercise rules of issue 17: at least one exercise in which the
learner builds a technique, at least two predict-then-measure questions that the notebook
asks, and the learner's passing code driving the experiment that follows (``choose``)."""

import json
from pathlib import Path

import pytest

from infer_lab import exercises

LABS = Path(__file__).resolve().parents[1] / "labs"


def _code(lab: str) -> str:
    nb = json.loads((LABS / f"{lab}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("module", exercises.LAB_MODULES, ids=lambda m: m.LAB)
def test_lab_has_a_technique_exercise(module):
    kinds = {e.name: getattr(e, "kind", "warm-up") for e in module.EXERCISES}
    assert "technique" in kinds.values(), f"{module.LAB}: only warm-ups ({kinds})"
    assert set(kinds.values()) <= {"technique", "warm-up"}, kinds


@pytest.mark.parametrize("module", exercises.LAB_MODULES, ids=lambda m: m.LAB)
def test_lab_asks_its_predictions(module):
    code = _code(module.LAB)
    mine = [p.name for p in exercises.PREDICTIONS.values() if p.lab == module.LAB]
    assert len(mine) >= 2, f"{module.LAB} has {len(mine)} predictions"
    for name in mine:
        assert f'predict("{name}"' in code, f"{module.LAB} never asks {name}"
    assert code.count(".against(") >= len(mine), f"{module.LAB}: a prediction is never graded"


@pytest.mark.parametrize("module", exercises.LAB_MODULES, ids=lambda m: m.LAB)
def test_learners_code_drives_the_lab(module):
    assert ".choose(" in _code(module.LAB), f"{module.LAB} never runs the learner's code"


@pytest.mark.parametrize("module", exercises.LAB_MODULES, ids=lambda m: m.LAB)
def test_every_checker_is_called_in_its_lab(module):
    code = _code(module.LAB)
    for e in module.EXERCISES:
        assert f"check_{e.name}(" in code, f"{module.LAB} never checks {e.name}"
