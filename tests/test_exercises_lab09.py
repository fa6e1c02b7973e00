"""Lab 09's exercises: registered in the catalogue, the references pass and equal the
package's implementations, and each registered mistake (and a few planted ones) is
rejected (tests/test_exercises.py also checks every mistake's hint)."""

import math
import random

import pytest

from infer_lab.app.cascade import Answers, cascade_curve
from infer_lab.app.rate_limit import RateLimitConfig, RateLimiter
from infer_lab.app.regex_fsm import compile_regex
from infer_lab.app.token_mask import TokenMasks, Vocabulary
from infer_lab.exercises import applications as ex
from infer_lab.exercises import catalog, lab_exercises, progress

NAMES = ("token_mask", "cascade_expected_cost", "token_bucket")


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))


def test_catalogue_lists_lab_09():
    assert catalog.LABS["09_applications"] == NAMES and ex.LAB == "09_applications"
    assert lab_exercises("09_applications") == list(NAMES)
    assert [e.name for e in ex.EXERCISES] == list(NAMES)
    kinds = {e.name: e.kind for e in ex.EXERCISES}
    assert kinds["token_mask"] == kinds["token_bucket"] == "technique"


def test_references_pass_and_are_recorded(capsys):
    for e in ex.EXERCISES:
        assert e.check(e.reference, seed=1).passed
    assert progress.lab_progress("09_applications")["token_bucket"]["status"] == "passed"


@pytest.mark.parametrize("e", ex.EXERCISES, ids=lambda e: e.name)
def test_every_mistake_is_rejected_and_named(e):
    for m in e.mistakes:
        r = e.check(m.fn, seed=0, verbose=False, record=False)
        assert r.status == "failed" and r.mistake == m.name, (m.name, r.message)


@pytest.mark.parametrize("pattern", ex.PATTERNS)
def test_token_mask_equals_the_package_masks(pattern):
    dfa = compile_regex(pattern)
    texts = [t if t else None for t in ex.TEXTS]  # the package never allows an empty text
    masks = TokenMasks(dfa, Vocabulary(tuple(texts), None, len(texts)))
    for q in dfa.states:
        mine, pkg = ex.token_mask(dfa, texts, q), masks.mask(q).tolist()
        # The package also drops a token whose next state this vocabulary cannot finish.
        finishable = [m and masks.min_tokens(dfa.walk(t, q)) < math.inf
                      for m, t in zip(mine, texts)]
        assert finishable == pkg


def test_cascade_cost_equals_the_package_curve():
    small = Answers(["a"] * 4, [True, False, True, False], [-0.1, -2.0, -0.5, -3.0])
    large = Answers(["b"] * 4, [True, True, True, False], [0.0] * 4)
    for p in cascade_curve(small, large, 0.3):
        assert math.isclose(p.cost, ex.cascade_expected_cost(0.3, 1.0, p.escalated))


def test_token_bucket_equals_the_server_limiter():
    rng = random.Random(0)
    for _ in range(20):
        rate, burst, reqs = ex._bucket_case(rng).args
        reqs = [(t, c) for t, c in reqs if c <= burst]  # the limiter raises NeverFits above
        lim = RateLimiter(RateLimitConfig.simple(rate, burst), clock=lambda: 0.0)
        want = [tuple(lim.try_acquire("k", c, now=t)) for t, c in reqs]
        got = ex.replay(ex.token_bucket, rate, burst, reqs)
        assert [ok for ok, _ in got] == [ok for ok, _ in want]
        assert all(math.isclose(a, b, abs_tol=1e-6) for (_, a), (_, b) in zip(got, want))


@pytest.mark.parametrize("wrong", [
    lambda rate, burst: (lambda now, cost: (True, 0.0)),  # admits everything
    lambda rate, burst: (lambda now, cost: (cost <= burst, 0.0)),  # never says when
])
def test_planted_buckets_are_rejected(wrong, capsys):
    r = ex.EXERCISES[2].check(wrong, seed=0)
    assert r.status == "failed" and "take()" in r.message


def test_a_stub_bucket_is_not_attempted(capsys):
    def stub(rate, burst):
        def take(now, cost):
            raise NotImplementedError
        return take

    assert ex.EXERCISES[2].check(stub).status == "not attempted"


def test_lab_09_predictions():
    from infer_lab.exercises import PREDICTIONS

    mine = [p for p in PREDICTIONS.values() if p.lab == "09_applications"]
    assert {p.name for p in mine} == {"app_prompt_cache_ttft", "app_bucket_admitted"}
    assert all("Within" in p.question for p in mine)
    burst = ex.replay(ex.token_bucket, 2.0, 5.0,
                      [(0.0, 1.0)] * 20 + [((i + 1) * 0.25, 1.0) for i in range(20)])
    p = PREDICTIONS["app_bucket_admitted"]
    assert p.close_enough(15, sum(ok for ok, _ in burst))  # the explanation's arithmetic
