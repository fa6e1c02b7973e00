"""Lab 08's exercises: registered in the catalogue, the references pass, and a planted
wrong answer for each is rejected (every registered mistake is checked with its hint in
tests/test_exercises.py)."""

import math

import pytest

from infer_lab.exercises import catalog, lab_exercises, progress
from infer_lab.exercises import runtimes as ex
from infer_lab.runtimes.profile import op_kind

NAMES = ("roofline_tokens_per_s", "gemv_reduction", "break_even_tokens", "op_kind")


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def test_catalogue_lists_lab_08():
    assert catalog.LABS["08_runtimes"] == NAMES and ex.LAB == "08_runtimes"
    assert lab_exercises("08_runtimes") == list(NAMES)
    assert [e.name for e in ex.EXERCISES] == list(NAMES)
    assert ex.EXERCISES[3].reference is op_kind  # the lab's profile uses the same function


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


def test_gemv_reduction_is_a_technique_equal_to_the_package():
    import torch
    import torch.nn.functional as F

    from infer_lab.runtimes.gemv import ReductionLinear

    e = ex.EXERCISES[1]
    assert e.kind == "technique" and e.code_hint
    lin = torch.nn.Linear(48, 20)
    x = torch.randn(1, 1, 48)
    want = F.linear(x, lin.weight, lin.bias)
    assert torch.allclose(ex.gemv_reduction(x, lin.weight, lin.bias), want, atol=1e-6)
    # the package's module computes the same product inside a compiled graph
    compiled = torch.compile(ReductionLinear(lin), backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), ex.gemv_reduction(x, lin.weight, lin.bias), atol=1e-6)


@pytest.mark.parametrize("gemm", [
    lambda x, w, b=None: x @ w.T + (0 if b is None else b),
    lambda x, w, b=None: torch_einsum(x, w) + (0 if b is None else b),
    lambda x, w, b=None: (x.reshape(-1, x.shape[-1]).mm(w.T)).reshape(*x.shape[:-1], -1)
    + (0 if b is None else b),
])
def test_a_gemm_call_is_refused_even_when_right(gemm):
    from infer_lab.exercises.runtimes_gemv import GEMM_HINT

    r = ex.EXERCISES[1].check(gemm, seed=0, verbose=False)
    assert r.status == "failed" and GEMM_HINT in r.message


def torch_einsum(x, w):
    import torch

    return torch.einsum("...k,nk->...n", x, w)


def test_gemv_reduction_keeps_the_dtype():
    import torch

    e = ex.EXERCISES[1]
    r = e.check(lambda x, w, b=None: ex.gemv_reduction(x.float(), w.float(),
                                                        None if b is None else b.float()),
                seed=0, verbose=False)
    assert r.status == "failed" and "dtype" in r.message
    assert torch.float64 in {c.args[0].dtype for c in e.fixed_cases}


def test_lab_08_predictions():
    from infer_lab.exercises import PREDICTIONS

    mine = [p for p in PREDICTIONS.values() if p.lab == "08_runtimes"]
    assert {p.name for p in mine} >= {"runtimes_int4_speedup", "runtimes_compiled_speedup"}
    assert all(p.rel_tol and "Within" in p.question for p in mine)
