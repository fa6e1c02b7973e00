"""Lab 05's exercises against the package they teach (issue 17, section 5): verify_draft
emits the same tokens as infer_lab.speculative.verify from the same seed, temperature_probs
equals the sampler's logits_to_probs (large logits included), the formulas equal
theoretical_speedup; correct variants pass, and each mistake is named on a fixed case."""

import copy
import random

import pytest
import torch

from infer_lab import exercises
from infer_lab.exercises import EXERCISES, PREDICTIONS
from infer_lab.exercises import speculative as ex5
from infer_lab.exercises.speculative_verify import verify_draft
from infer_lab.generate import Sampling, logits_to_probs
from infer_lab.speculative import theoretical_speedup, verify


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def _check(name, fn, seed=0):
    return EXERCISES[name].check(fn, seed=seed, verbose=False, record=False)


# -- cross-checks against the package -------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_verify_draft_reference_emits_what_the_library_verify_emits(seed):
    for case in EXERCISES["verify_draft"].cases(seed):
        p, q, draft, gen, accept = case.args
        tokens, n = verify_draft(p, q, draft, copy.deepcopy(gen), accept)
        n_lib, nxt = verify(p, q, draft, False, copy.deepcopy(gen))
        assert (n, tokens) == (n_lib, draft[:n_lib] + [nxt])


def test_verify_draft_with_a_one_hot_proposal_matches_verify_with_q_none():
    rng = random.Random(0)
    for _ in range(50):
        V, k = rng.randint(2, 12), rng.randint(1, 5)
        p = torch.softmax(torch.randn(k + 1, V, dtype=torch.float64) * 2, -1)
        draft = [rng.randrange(V) for _ in range(k)]
        q = torch.nn.functional.one_hot(torch.tensor(draft), V).double()  # (k, V)
        seed = rng.randrange(2**31)
        tokens, n = verify_draft(p, q, draft, torch.Generator().manual_seed(seed),
                                 ex5.accept_or_resample)
        n_lib, nxt = verify(p, None, draft, False, torch.Generator().manual_seed(seed))
        assert (n, tokens) == (n_lib, draft[:n_lib] + [nxt])


@pytest.mark.parametrize("seed", range(3))
def test_temperature_probs_equals_the_samplers_softmax(seed):
    for case in EXERCISES["temperature_probs"].cases(seed):
        logits, T = case.args
        got = ex5.temperature_probs(logits, T)
        assert got.dtype == logits.dtype and torch.isfinite(got).all()
        want = logits_to_probs(logits, Sampling(temperature=T))  # float32 always
        assert torch.allclose(got.float(), want, rtol=2e-3, atol=1e-7)


def test_formulas_equal_the_library():
    for a in (0.0, 0.3, 0.77, 0.99, 1.0):
        for k in (1, 2, 5, 8):
            for c in (0.0, 0.05, 0.4, 1.2):
                assert ex5.speculative_speedup(a, k, c) == pytest.approx(
                    theoretical_speedup(a, k, c), rel=1e-12)


# -- large logits: a softmax without the max shift fails --------------------------------------
def test_large_logits_fail_an_unshifted_softmax_and_pass_a_stable_one():
    naive = lambda z, T: (z / T).exp() / (z / T).exp().sum(-1, keepdim=True)
    r = _check("temperature_probs", naive)
    assert not r and r.mistake == "no max shift" and "overflow" in r.message
    assert _check("temperature_probs", lambda z, T: torch.softmax(z / T, dim=-1))
    assert _check("temperature_probs", lambda z, T: torch.nn.functional.softmax(z / T, -1))
    r = _check("temperature_probs", lambda z, T: torch.softmax(z.float() / T, -1))
    assert not r and "dtype" in r.message  # the float64 case keeps float64


# -- correct variants pass, mistakes are named on the fixed cases -----------------------------
def _sample_then_compare(p, q, draft, gen, accept):
    out = []
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, float(torch.rand(1, generator=gen)))
        if dist[d] > 0:
            out.append(d)
            continue
        return torch.tensor(out + [torch.multinomial(dist, 1, generator=gen).item()]), i
    bonus = torch.multinomial(p[-1][None], 1, generator=gen).item()
    return tuple(out) + (bonus,), torch.tensor(len(draft))


def test_equivalent_verify_answers_pass():
    assert _check("verify_draft", _sample_then_compare)


def test_verify_answers_of_the_wrong_form_fail_without_crashing():
    for fn, words in [(lambda *a: 3, "pair"), (lambda *a: ("ab", 1), "list of ints"),
                      (lambda *a: ([1], 0, 2), "pair"), (lambda *a: (None, 0), "list of ints")]:
        r = _check("verify_draft", fn)
        assert r.status == "failed" and words in r.message, r.message


@pytest.mark.parametrize("mistake", EXERCISES["verify_draft"].mistakes, ids=lambda m: m.name)
def test_each_verify_mistake_is_named_on_a_fixed_case_whatever_the_seed(mistake):
    ex = EXERCISES["verify_draft"]
    for seed in range(4):
        r = _check("verify_draft", mistake.fn, seed)
        assert r.mistake == mistake.name and r.n_passed < len(ex.fixed_cases), r.message


def test_lab05_kinds_catalog_and_predictions():
    kinds = {e.name: e.kind for e in ex5.EXERCISES}
    assert kinds == {"temperature_probs": "warm-up", "accept_or_resample": "technique",
                     "verify_draft": "technique", "expected_tokens_per_call": "warm-up",
                     "speculative_speedup": "warm-up", "tree_attention_mask": "technique",
                     "accept_among_siblings": "technique"}
    assert exercises.lab_exercises(ex5.LAB) == list(kinds)
    mine = [p for p in PREDICTIONS.values() if p.lab == ex5.LAB]
    assert {p.name for p in mine} == {"spec_tokens_per_call", "spec_best_k"}
    assert PREDICTIONS["spec_best_k"].close_enough(3, 4)
    assert not PREDICTIONS["spec_best_k"].close_enough(2, 4)
