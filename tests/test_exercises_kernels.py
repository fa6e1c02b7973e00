"""Lab 07's kernel exercises: the reference kernels pass, every registered wrong kernel is
rejected with its own hint, stubs are "not attempted" (read from the source, never
launched), and a kernel that raises, a plain function, a missing Triton or a CPU without
the interpreter each get a verdict instead of an exception. Runs under Triton's interpreter
on a CPU (conftest sets TRITON_INTERPRET=1), compiled on a GPU."""

import subprocess
import sys

import pytest

from infer_lab.exercises import EXERCISES, catalog, lab_exercises, progress
from infer_lab.exercises.kernel_checker import KernelExercise, is_stub
from infer_lab.kernels import runtime
from infer_lab.kernels.runtime import jit, tl

pytestmark = pytest.mark.skipif(not runtime.HAS_TRITON, reason="needs Triton")
NAMES = ("softmax_kernel", "online_softmax_kernel", "int4_gemv_kernel")


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))
    return tmp_path


@jit
def row_stub(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    tl.program_id(0)  # a learner's start: launching it would raise
    # YOUR CODE HERE
    raise NotImplementedError


@jit
def int4_stub(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
              HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        raise NotImplementedError  # the skeleton's K loop
    tl.store(Y, acc)


@jit
def row_arange_not_power_of_two(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride,
                                BLOCK: tl.constexpr):
    cols = tl.arange(0, 100)
    tl.store(y_ptr + cols, tl.load(x_ptr + cols))


STUBS = {"softmax_kernel": row_stub, "online_softmax_kernel": row_stub,
         "int4_gemv_kernel": int4_stub}


def test_catalog_lists_the_kernel_exercises():
    assert catalog.LABS["07_kernels"] == NAMES
    assert lab_exercises("07_kernels") == list(NAMES)
    assert all(isinstance(EXERCISES[n], KernelExercise) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes_and_is_recorded(name, capsys):
    ex = EXERCISES[name]
    r = ex.check(ex.reference, seed=3)
    assert r.passed, r.message
    assert r.n_passed == r.n_cases >= 12
    out = capsys.readouterr().out
    assert "✅" in out and "seed 3" in out
    entry = progress.lab_progress("07_kernels")[name]
    assert entry["status"] == "passed" and entry["attempts"] == 1


@pytest.mark.parametrize("name,mistake", [(n, m) for n in NAMES for m in EXERCISES[n].mistakes])
def test_each_wrong_kernel_is_rejected_with_its_hint(name, mistake, capsys):
    r = EXERCISES[name].check(mistake.fn, seed=0)
    assert r.status == "failed"
    assert mistake.hint in r.message, r.message
    assert "❌" in capsys.readouterr().out


def test_each_exercise_has_three_mistakes_with_distinct_hints():
    for name in NAMES:
        hints = [m.hint for m in EXERCISES[name].mistakes]
        assert len(hints) >= 3 and len(set(hints)) == len(hints), name


@pytest.mark.parametrize("name", NAMES)
def test_untouched_stub_is_not_attempted(name, capsys):
    assert is_stub(STUBS[name])
    r = EXERCISES[name].check(STUBS[name])
    assert r.status == "not attempted" and not r
    assert "not attempted" in capsys.readouterr().out
    entry = progress.lab_progress("07_kernels")[name]
    assert entry["status"] == "not attempted" and entry["attempts"] == 0


def test_stub_detection_reads_the_body_not_comments():
    assert not is_stub(EXERCISES["softmax_kernel"].reference)

    def mentions(x):
        # raise NotImplementedError  <- a comment, not a raise
        return "raise NotImplementedError"

    assert not is_stub(mentions)


def test_a_kernel_that_raises_is_failed_with_its_line():
    r = EXERCISES["softmax_kernel"].check(row_arange_not_power_of_two, seed=0, verbose=False)
    assert r.status == "failed" and "raised an error" in r.message
    assert "power of 2" in r.error
    assert "tl.arange(0, 100)" in r.error  # the learner's line, under the interpreter


def test_a_plain_function_is_refused():
    def softmax_kernel(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK):
        return None

    r = EXERCISES["softmax_kernel"].check(softmax_kernel, verbose=False)
    assert r.status == "failed" and "@triton.jit" in r.message


def test_without_triton_it_is_not_attempted(monkeypatch):
    monkeypatch.setattr(runtime, "HAS_TRITON", False)
    ex = EXERCISES["softmax_kernel"]
    r = ex.check(ex.reference, verbose=False)
    assert r.status == "not attempted" and "pip install triton" in r.message
    assert len(r.message.splitlines()) == 1


def test_cpu_without_the_interpreter_says_how_to_fix_it(monkeypatch):
    if EXERCISES["softmax_kernel"].device.type == "cuda":
        pytest.skip("on a GPU the kernel compiles")
    monkeypatch.setattr(runtime, "_INTERPRET", False)
    ex = EXERCISES["int4_gemv_kernel"]
    r = ex.check(ex.reference, verbose=False)
    assert r.status == "not attempted" and "TRITON_INTERPRET=1" in r.message


def test_each_check_draws_a_seed_and_names_it():
    ex = EXERCISES["int4_gemv_kernel"]
    seeds = {ex.check(ex.reference, verbose=False).message.split("seed ")[1].split(",")[0]
             for _ in range(3)}
    assert len(seeds) > 1  # a fresh draw each time (GPU MODE's hidden seed)


def test_solutions_print_the_reference_kernel(capsys):
    from infer_lab.exercises import show_solution

    show_solution("online_softmax_kernel")
    out = capsys.readouterr().out
    assert "def _online_softmax_kernel" in out and "tl.exp(m - m_new)" in out


def test_importing_the_exercises_does_not_import_triton():
    code = ("import sys, infer_lab.exercises as e; e.EXERCISES; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernels_are_techniques_with_tiered_hints():
    for name in NAMES:
        ex = EXERCISES[name]
        assert ex.kind == "technique" and ex.code_hint and ex.code_hint != ex.hint, name
        assert "tl." in ex.code_hint, name  # the code-level tier is the kernel's lines


def test_code_level_help_only_after_three_failed_checks():
    from infer_lab.exercises.checker import CODE_HINT_AFTER

    ex = EXERCISES["softmax_kernel"]
    wrong = ex.mistakes[0].fn  # no max subtracted
    for k in range(1, CODE_HINT_AFTER + 2):
        r = ex.check(wrong, seed=0, verbose=False)
        assert r.status == "failed" and ex.hint in r.message and ex.mistakes[0].hint in r.message
        assert (ex.code_hint in r.message) == (k >= CODE_HINT_AFTER), k
    assert progress.lab_progress("07_kernels")["softmax_kernel"]["failures"] == CODE_HINT_AFTER + 1


def test_bounds_failures_count_towards_the_code_hint():
    from infer_lab.exercises.checker import CODE_HINT_AFTER

    ex = EXERCISES["online_softmax_kernel"]
    unmasked = next(m.fn for m in ex.mistakes if m.name == "second loop unmasked")
    msgs = [ex.check(unmasked, seed=0, verbose=False).message for _ in range(CODE_HINT_AFTER)]
    assert all("bounds check" in m for m in msgs)
    assert [ex.code_hint in m for m in msgs] == [False] * (CODE_HINT_AFTER - 1) + [True]


@pytest.mark.parametrize("name", ["softmax_kernel", "online_softmax_kernel"])
def test_large_logits_fail_a_kernel_without_the_max(name):
    ex = EXERCISES[name]
    no_max = next(m for m in ex.mistakes if "max" in m.name and "one tile" not in m.name)
    r = ex.check(no_max.fn, seed=5, verbose=False)
    assert r.status == "failed" and r.mistake == no_max.name
    assert "large" in r.failed_case and "inf or NaN" in r.message


def test_choose_hands_the_lab_the_learners_kernel(capsys):
    ex = EXERCISES["softmax_kernel"]
    mine = next(m.fn for m in ex.mistakes if m.name == "wrong sum")
    assert ex.check(mine, seed=0, verbose=False).choose(mine) is ex.reference
    assert ex.check(ex.reference, seed=0, verbose=False).choose(row_stub) is row_stub
    assert EXERCISES["int4_gemv_kernel"].check(int4_stub, verbose=False).choose(
        int4_stub) is EXERCISES["int4_gemv_kernel"].reference
