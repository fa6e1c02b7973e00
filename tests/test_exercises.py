"""Checkers accept their reference, reject plausible wrong answers, and never crash a lab.

The kernel exercises of lab 07 (the learner hands in a Triton kernel, not a function) get
the same guarantees in tests/test_exercises_kernels.py."""

import json
import os

import pytest
import torch

from infer_lab import exercises
from infer_lab.exercises import EXERCISES, progress
from infer_lab.exercises.checker import Case, Exercise, Mistake, compare
from infer_lab.exercises.kernel_checker import KernelExercise

FUNCTIONS = [n for n, e in EXERCISES.items() if not isinstance(e, KernelExercise)]


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    """Every test writes progress to its own folder, never the user's home."""
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))
    return tmp_path


def _not_attempted(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("name", FUNCTIONS)
def test_reference_passes(name, capsys):
    ex = EXERCISES[name]
    for seed in range(3):
        r = ex.check(ex.reference, seed=seed)
        assert r.passed, r.message
        assert r.n_passed == r.n_cases == len(ex.fixed_cases) + ex.n_random
    assert "✅" in capsys.readouterr().out
    entry = progress.lab_progress(ex.lab)[name]
    assert entry["status"] == "passed" and entry["attempts"] == 3 and entry["passed_at"]


@pytest.mark.parametrize("name,mistake", [(n, m) for n in FUNCTIONS
                                          for m in EXERCISES[n].mistakes])
def test_known_mistake_is_rejected_with_its_hint(name, mistake, capsys):
    r = EXERCISES[name].check(mistake.fn, seed=0)
    assert r.status == "failed"
    assert mistake.hint in r.message  # the verdict names the specific mistake
    assert "❌" in capsys.readouterr().out


def test_every_exercise_has_at_least_two_mistakes():
    for name, ex in EXERCISES.items():
        assert len(ex.mistakes) >= 2, name
        assert ex.hint, name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_not_attempted_does_not_raise(name, capsys):
    r = EXERCISES[name].check(_not_attempted)
    assert r.status == "not attempted" and not r
    assert "not attempted" in capsys.readouterr().out
    entry = progress.lab_progress(EXERCISES[name].lab)[name]
    assert entry["status"] == "not attempted" and entry["attempts"] == 0


@pytest.mark.parametrize("name", FUNCTIONS)
def test_crashing_function_is_reported_not_raised(name):
    def broken(*args, **kwargs):
        return 1 / 0

    r = EXERCISES[name].check(broken, verbose=False)
    assert r.status == "failed" and "ZeroDivisionError" in r.message
    assert "1 / 0" in r.message  # the offending line of the learner's code


def test_wrong_types_are_reported():
    assert not exercises.check("kv_cache_bytes", lambda *a: "many bytes", verbose=False)
    assert not exercises.check("sliding_window_mask", lambda T, w: [[True]], verbose=False)
    r = exercises.check("sliding_window_mask", lambda T, w: torch.ones(T, T), verbose=False)
    assert "bool" in r.message
    r = exercises.check_weight_bytes(exercises.welcome.weight_bytes(10, 8), verbose=False)
    assert "function" in r.message


def test_partial_implementation_fails_on_later_case():
    def partial(n_params, bits):
        if bits == 4:
            raise NotImplementedError
        return n_params * bits / 8

    r = exercises.check_weight_bytes(partial, verbose=False)
    assert r.status == "failed" and "NotImplementedError" in r.message


def test_mutating_inputs_does_not_fool_the_checker():
    def sneaky(q, k_new, v_new, k_cache, v_cache):
        k_cache.zero_()
        v_cache.zero_()
        return exercises.kv_cache.decode_attention(q, k_new, v_new, k_cache, v_cache)

    assert not exercises.check_decode_attention(sneaky, verbose=False)


def test_check_functions_exist_and_solutions_print(capsys):
    for name in EXERCISES:
        assert callable(getattr(exercises, f"check_{name}"))
        exercises.show_solution(name)
        out = capsys.readouterr().out
        assert f"def {name}" in out or f"def _{name}" in out  # kernels: the file's own
    with pytest.raises(ValueError, match="no exercise"):
        exercises.show_solution("nope")


def test_lab_exercise_lists():
    assert exercises.lab_exercises("00_welcome") == [
        "greedy_decode", "decode_tokens_per_second", "weight_bytes", "cost_per_million_tokens"]
    assert len(exercises.lab_exercises("01_kv_cache")) == 3


def test_compare_tolerances():
    assert compare(1.0 + 1e-9, 1.0) is None
    assert compare(1.1, 1.0) is not None
    assert compare(torch.tensor(2.0), 2.0) is None
    assert compare(True, 1.0) is not None
    assert compare(float("nan"), 1.0) is not None
    assert compare(torch.zeros(2), torch.zeros(3)) is not None
    assert compare(torch.tensor([1, 2]), torch.tensor([1.0, 2.0])) is not None  # dtype
    assert compare(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), exact_dtype=False) is None
    assert compare(torch.tensor([float("nan")]), torch.tensor([0.0])) == "your answer contains NaN"


def test_diagnose_falls_back_to_general_hint():
    ex = Exercise("double", "test_lab", lambda x: 2 * x, [Case((1,)), Case((3,))],
                  hint="general", mistakes=[Mistake("triple", lambda x: 3 * x, "specific")])
    assert ex.check(lambda x: 3 * x, verbose=False).hint == "specific"
    assert ex.check(lambda x: 5 * x, verbose=False).hint == "general"


# -- progress store ---------------------------------------------------------------------------
def test_progress_path_follows_home(tmp_home, monkeypatch):
    assert progress.progress_path() == tmp_home / "progress.json"
    monkeypatch.delenv("INFER_LAB_HOME")
    assert progress.progress_path().parent.name == ".infer_lab"


def test_missing_file_is_empty(tmp_home):
    assert progress.load_progress() == {"version": 1, "labs": {}}
    assert progress.lab_progress("01_kv_cache") == {}
    assert progress.summary() == {}


def test_record_schema_and_attempts():
    progress.record("01_kv_cache", "x", "failed", "wrong")
    progress.record("01_kv_cache", "x", "passed", "ok")
    e = progress.record("01_kv_cache", "x", "failed", "broke it again")
    assert e["attempts"] == 3 and e["status"] == "failed" and e["passed_at"]
    data = json.loads(progress.progress_path().read_text())
    assert data["version"] == 1
    assert set(data["labs"]["01_kv_cache"]["exercises"]["x"]) == {
        "status", "attempts", "failures", "first_at", "updated", "passed_at", "message"}
    assert e["failures"] == 2 and e["first_at"] <= e["passed_at"]
    with pytest.raises(ValueError):
        progress.record("01_kv_cache", "x", "great")


def test_not_attempted_never_erases_work():
    progress.record("00_welcome", "weight_bytes", "passed")
    e = progress.record("00_welcome", "weight_bytes", "not attempted")
    assert e["status"] == "passed" and e["attempts"] == 1
    assert progress.summary()["00_welcome"] == {"passed": 1, "failed": 0,
                                                "not attempted": 0, "total": 1}


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2, 3]", '{"labs": 3}',
                                     '{"labs": {"a": {"exercises": {"x": 5}}}}'])
def test_corrupt_file_is_moved_aside(tmp_home, content):
    path = progress.progress_path()
    path.write_text(content)
    with pytest.warns(UserWarning, match="not valid progress JSON"):
        assert progress.load_progress() == {"version": 1, "labs": {}}
    assert (tmp_home / "progress.json.corrupt").read_text() == content
    assert not path.exists()
    progress.record("00_welcome", "weight_bytes", "passed")  # and the store works again
    assert progress.lab_progress("00_welcome")["weight_bytes"]["status"] == "passed"


def test_binary_garbage_is_moved_aside(tmp_home):
    progress.progress_path().write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(UserWarning):
        assert progress.load_progress()["labs"] == {}
    assert (tmp_home / "progress.json.corrupt").exists()


def test_checker_survives_a_corrupt_store(tmp_home, capsys):
    progress.progress_path().write_text("{{{")
    with pytest.warns(UserWarning):
        r = exercises.check_cost_per_million_tokens(exercises.welcome.cost_per_million_tokens)
    assert r.passed


def test_write_is_atomic(tmp_home, monkeypatch):
    progress.record("00_welcome", "weight_bytes", "passed")
    before = progress.progress_path().read_text()

    def crash(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(progress.os, "replace", crash)
        with pytest.warns(UserWarning, match="could not save"):
            progress.record("00_welcome", "cost_per_million_tokens", "failed")
    assert progress.progress_path().read_text() == before  # old file whole
    assert [p.name for p in tmp_home.iterdir()] == ["progress.json"]  # no temp left


def test_unwritable_home_warns_not_raises(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("INFER_LAB_HOME", str(blocker / "sub"))  # parent is a file
    with pytest.warns(UserWarning) as warned:
        r = exercises.check_weight_bytes(exercises.welcome.weight_bytes, verbose=False)
    assert r.passed
    assert any("could not save" in str(w.message) for w in warned)


def test_reset():
    progress.record("00_welcome", "weight_bytes", "passed")
    progress.record("01_kv_cache", "kv_cache_bytes", "passed")
    progress.reset("00_welcome")
    assert list(progress.summary()) == ["01_kv_cache"]
    progress.reset()
    assert progress.summary() == {}


def test_show_progress(capsys):
    exercises.check_weight_bytes(exercises.welcome.weight_bytes, verbose=False)
    exercises.show_progress("00_welcome")
    out = capsys.readouterr().out
    assert "✅ weight_bytes" in out and "⬜ cost_per_million_tokens" in out


def test_temp_files_live_next_to_the_store(tmp_home):
    progress.record("00_welcome", "weight_bytes", "passed")
    assert os.listdir(tmp_home) == ["progress.json"]


def test_each_corrupt_file_gets_its_own_backup(tmp_home):
    """A second (third, ...) corrupt file never overwrites the backup of the first."""
    contents = ["{first", "[2]", "third}"]
    for text in contents:
        progress.progress_path().write_text(text)
        with pytest.warns(UserWarning, match="moved to"):
            progress.load_progress()
    backups = [tmp_home / "progress.json.corrupt", tmp_home / "progress.json.corrupt.1",
               tmp_home / "progress.json.corrupt.2"]
    assert [b.read_text() for b in backups] == contents
    assert sorted(p.name for p in tmp_home.glob("progress.json.corrupt*")) == \
        sorted(b.name for b in backups)


def test_backup_without_hard_links_still_never_overwrites(tmp_home, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr(progress.os, "link", no_links)
    for text in ("{a", "{b"):
        progress.progress_path().write_text(text)
        with pytest.warns(UserWarning):
            progress.load_progress()
    assert (tmp_home / "progress.json.corrupt").read_text() == "{a"
    assert (tmp_home / "progress.json.corrupt.1").read_text() == "{b"
