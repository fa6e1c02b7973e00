"""Lab 08's exercises: registered in the catalogue, the references pass, and a planted
wrong answer for each is rejected (every registered mistake is checked with its hint in
tests/test_exercises.py)."""

import math

import pytest

from infer_lab.exercises import catalog, lab_exercises, progress
from infer_lab.exercises import runtimes as ex
from infer_lab.runtimes.profile import op_kind

NAMES = ("roofline_tokens_per_s", "op_kind", "break_even_tokens")


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def test_catalogue_lists_lab_08():
    assert catalog.LABS["08_runtimes"] == NAMES and ex.LAB == "08_runtimes"
    assert lab_exercises("08_runtimes") == list(NAMES)
    assert [e.name for e in ex.EXERCISES] == list(NAMES)
    assert ex.EXERCISES[1].reference is op_kind  # the lab's profile uses the same function


def test_references_pass_and_are_recorded(capsys):
    for e in ex.EXERCISES:
        assert e.check(e.reference, seed=1).passed
    assert progress.lab_progress("08_runtimes")["op_kind"]["status"] == "passed"


@pytest.mark.parametrize("name, wrong", [
    ("roofline_tokens_per_s", lambda p, b, bw: bw * 1e9 / (p * b) * 2),  # "two reads"
    ("op_kind", lambda n: "copy/cast" if op_kind(n) == "view/alloc" else op_kind(n)),
    ("op_kind", lambda n: op_kind(n) if n.startswith("aten::") else "matmul"),
    ("break_even_tokens", lambda c, e, k: math.ceil(c / (e - k)) if e > k else math.inf),
])
def test_planted_mistakes_are_rejected(name, wrong, capsys):
    e = next(e for e in ex.EXERCISES if e.name == name)
    r = e.check(wrong, seed=0)
    assert r.status == "failed" and "❌" in capsys.readouterr().out
