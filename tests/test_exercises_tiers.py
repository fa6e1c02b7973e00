"""Hints in tiers, dtypes as part of the answer, the learner's code driving the lab,
predictions graded and recorded, and the instructor's export (issue 17, sections 1, 3-5, 8)."""

import csv
import json

import pytest
import torch

from infer_lab import exercises
from infer_lab import progress as export_cli
from infer_lab.exercises import EXERCISES, PREDICTIONS, progress
from infer_lab.exercises.checker import CODE_HINT_AFTER, Case, Exercise, Mistake, compare
from infer_lab.exercises.kernel_checker import KernelExercise
from infer_lab.exercises.predictions import Prediction

FUNCTIONS = [n for n, e in EXERCISES.items() if not isinstance(e, KernelExercise)]
CODE_SIGNS = ("torch.", "return ", ".reshape(", "[..., ", " = ", "()")


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))
    return tmp_path


def _double():
    return Exercise("double", "test_lab", lambda x: 2 * x, [Case((1,)), Case((3,))],
                    hint="scale the input", code_hint="return 2 * x",
                    mistakes=[Mistake("triple", lambda x: 3 * x, "too large a factor")])


def test_code_hint_only_after_repeated_failures(capsys):
    ex = _double()
    for k in range(1, CODE_HINT_AFTER + 1):
        r = ex.check(lambda x: 3 * x)
        assert "scale the input" in r.message and "too large a factor" in r.message
        assert r.mistake == "triple"
        assert ("return 2 * x" in r.message) == (k >= CODE_HINT_AFTER), k
    assert progress.lab_progress("test_lab")["double"]["failures"] == CODE_HINT_AFTER
    assert ex.check(lambda x: 2 * x).passed
    assert progress.lab_progress("test_lab")["double"]["first_at"]


def test_no_first_hint_spells_out_code():
    for name, ex in EXERCISES.items():
        assert ex.hint, name
        signs = [s for s in CODE_SIGNS if s in ex.hint]
        assert not signs, f"{name}'s first hint reads like code ({signs}): {ex.hint}"
        if not isinstance(ex, KernelExercise):
            assert ex.code_hint, f"{name} has no code-level hint"


def test_dtype_is_part_of_the_answer():
    want = torch.tensor([1, 2], dtype=torch.uint8)
    assert compare(torch.tensor([1, 2]), want) is not None  # int64
    assert "dtype" in compare(torch.tensor([1.0, 2.0]), want)
    assert compare(torch.tensor([1, 2], dtype=torch.uint8), want) is None
    assert compare(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), exact_dtype=False) is None


def test_choose_runs_the_learners_code_once_it_passes(capsys):
    ex = _double()
    mine = lambda x: x + x
    assert ex.check(mine).choose(mine) is mine
    assert "your double" in capsys.readouterr().out
    wrong = lambda x: 3 * x
    assert ex.check(wrong).choose(wrong) is ex.reference
    assert "reference" in capsys.readouterr().out


def test_predictions_are_graded_within_tolerance_and_recorded(capsys):
    p = Prediction("t_pred", "test_lab", "how many?", "tokens/s", rel_tol=0.25, explain="why")
    g = p.predict(100.0)
    assert progress.lab_predictions("test_lab")["t_pred"]["status"] == "predicted"
    r = g.against(120.0)
    assert r.passed and "Why: why" in r.message
    assert not p.predict(100.0).against(200.0)
    entry = progress.lab_predictions("test_lab")["t_pred"]
    assert entry["status"] == "failed" and entry["attempts"] == 2 and entry["measured"] == 200
    assert p.predict(None).against(5.0).status == "not attempted"
    with pytest.raises(ValueError, match="finite number"):
        p.predict(float("nan"))
    with pytest.raises(ValueError, match="finite number"):
        p.predict("lots")


def test_every_lab_asks_two_predictions():
    labs = {}
    for p in PREDICTIONS.values():
        labs[p.lab] = labs.get(p.lab, 0) + 1
        assert p.question and p.unit and p.explain, p.name
    missing = {m.LAB for m in exercises.LAB_MODULES if labs.get(m.LAB, 0) < 2}
    assert not missing, f"labs with fewer than two predictions: {sorted(missing)}"


def test_predict_names_unknown_predictions():
    with pytest.raises(ValueError, match="no prediction"):
        exercises.predict("nope", 1.0)


def test_export_and_merge(tmp_path, capsys):
    ex = _double()
    ex.check(lambda x: 3 * x, verbose=False)
    ex.check(lambda x: 2 * x, verbose=False)
    Prediction("t_pred", "test_lab", "q", "ms", abs_tol=1).predict(3, verbose=False).against(
        3.5, verbose=False)
    assert export_cli.main(["export", "--learner", "ana", "--out", str(tmp_path / "a")]) == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["learner"] == "ana"
    kinds = {(r["kind"], r["name"]): r for r in doc["rows"]}
    assert kinds["exercise", "double"]["status"] == "passed"
    assert kinds["exercise", "double"]["attempts"] == 2
    assert kinds["prediction", "t_pred"]["guess"] == 3
    with open(tmp_path / "a.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # a second learner's raw store, named by its folder
    (tmp_path / "ben").mkdir()
    (tmp_path / "ben" / "progress.json").write_text(json.dumps(
        {"version": 1, "labs": {"test_lab": {"exercises": {"double": {"status": "failed"}}}}}))
    assert export_cli.main(["merge", str(tmp_path / "a.json"),
                            str(tmp_path / "ben" / "progress.json"),
                            "--out", str(tmp_path / "class")]) == 0
    with open(tmp_path / "class.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["learner"] for r in table} == {"ana", "ben"}
    assert "ana" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert export_cli.main(["merge", str(tmp_path / "junk.json")]) == 2
