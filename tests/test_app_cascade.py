"""Cascades and routing (issue 19, section 3): the quality-cost arithmetic on hand-made
answers, the learned router, and the small model's lines with confidence equal to the
greedy lines the quality module writes."""

import math

import pytest
import torch

from infer_lab.app.cascade import (
    Answers,
    best_saving,
    cascade_curve,
    fit_router,
    lines_with_confidence,
    request_features,
    router_curve,
)

SMALL = Answers(["a"] * 4, [True, False, True, False], [-0.1, -2.0, -0.5, -3.0])
LARGE = Answers(["b"] * 4, [True, True, False, True], [0.0] * 4)


def test_the_cascade_curve_runs_from_always_small_to_always_large():
    pts = cascade_curve(SMALL, LARGE, cost_small=0.25)
    never, always = pts[0], pts[-1]
    assert (never.quality, never.cost, never.escalated) == (0.5, 0.25, 0.0)
    assert (always.quality, always.cost, always.escalated) == (0.75, 1.25, 1.0)
    # escalating the two least confident answers (-3.0, -2.0): both wrong when small,
    # right when large, so the cascade beats the large model at 0.75 of its cost
    mid = next(p for p in pts if p.threshold == -0.5)
    assert (mid.quality, mid.cost, mid.escalated) == (1.0, 0.75, 0.5)
    # within 1% of the large model's 0.75 the cheapest setting escalates only the -3.0
    # answer (small: right, wrong, right; large: right on the escalated one): cost 0.5
    saved, p = best_saving(pts, large_quality=0.75)
    assert p.threshold == -2.0 and (p.quality, p.cost) == (0.75, 0.5) and saved == 0.5


def test_no_setting_within_the_quality_budget_saves_nothing():
    bad = Answers(["a"] * 2, [False, False], [-1.0, -1.0])
    good = Answers(["b"] * 2, [True, True], [0.0, 0.0])
    pts = cascade_curve(bad, good, 0.5)
    saved, p = best_saving(pts, 1.0)
    assert saved == 0.0 and p.escalated == 1.0  # only always-escalating keeps quality


def test_the_router_pays_for_one_model_per_request():
    pts = router_curve([0.9, 0.1, 0.8, 0.2], SMALL, LARGE, cost_small=0.25)
    at = {p.threshold: p for p in pts}
    assert at[math.inf].cost == 1.0 and at[-math.inf].cost == 0.25
    assert at[0.8].quality == 1.0 and at[0.8].cost == pytest.approx((2 * 0.25 + 2) / 4)


def test_the_router_learns_a_separable_rule():
    feats = [[float(i), 0.0] for i in range(-10, 10)]
    labels = [i >= 0 for i in range(-10, 10)]
    router = fit_router(feats, labels, steps=400, lr=0.5)
    p = router(feats)
    assert ((p > 0.5).tolist() == labels) and p.shape == (20,)
    assert len(request_features("def f(x):\n    return x")) == len(request_features(""))


def test_bad_cascade_input_is_refused():
    with pytest.raises(ValueError, match="same"):
        cascade_curve(SMALL, Answers([], [], []), 0.3)
    with pytest.raises(ValueError, match="cost_small"):
        cascade_curve(SMALL, LARGE, -1.0)
    with pytest.raises(ValueError, match="label"):
        fit_router([[1.0]], [True, False])


def test_lines_with_confidence_are_the_greedy_next_lines():
    import infer_lab
    from infer_lab.quality import greedy_next_lines, next_line_samples
    from infer_lab.zoo.data import iter_files

    model, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    samples = next_line_samples(iter_files("valid")[:5], 6, seed=1)
    prefixes = [s.prefix for s in samples]
    lines, conf = lines_with_confidence(model, tok, prefixes, batch_size=4)
    assert lines == greedy_next_lines(model, tok, prefixes, batch_size=4, progress=False)
    assert all(c <= 0 for c in conf) and len(conf) == 6
