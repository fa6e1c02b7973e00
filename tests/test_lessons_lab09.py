"""Lab 09's drivers, figures and widgets: prompt-cache runs on code-s, the semantic cache's
explorer (on a stand-in embedder), the cascade's curve and slider, the schema editor with
a learner's masks, the token bucket's burst and the autoscaler's explorer. Kept small."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from figure_checks import assert_titled

import infer_lab
from infer_lab.app.cascade import Answers
from infer_lab.app.prompt_cache import Prices
from infer_lab.exercises import applications as ex
from infer_lab.lessons import lab09_applications as lab09
from infer_lab.lessons import lab09_applications_decode as dec
from infer_lab.lessons import lab09_applications_traffic as traffic
from infer_lab.scale import SCALES


@pytest.fixture(scope="module")
def code_s():
    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


class BagOfLetters:
    """A stand-in embedder: letter counts, unit length (no model download in a unit test)."""

    dim = 26

    def encode(self, texts):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_scale_groups():
    for s in SCALES.values():
        a = s.applications
        assert a.requests >= 2 and a.turns >= 2 and a.cascade_samples > 0 and a.trace_hours > 0
    assert SCALES["ci"].applications.chat_model is None
    assert SCALES["ci"].applications.model == "code-s"


def test_prompt_cache_runs_table_and_figure(code_s):
    model, tok = code_s
    sizes = replace(SCALES["ci"].applications, requests=2, turns=2, max_tokens=2,
                    system_chars=300)
    runs = lab09.prompt_cache_runs(model, tok, sizes, Prices())
    assert set(runs) == {"shared system prompt", "conversation"}
    shared = runs["shared system prompt"]
    assert shared["cached"][1].cached_tokens > 0 and shared["uncached"][1].cached_tokens == 0
    assert shared["cached"][1].cost < shared["uncached"][1].cost
    assert "TTFT" in lab09.prompt_cache_table(runs)
    assert_titled(lab09.prompt_cache_figure(runs))


def test_semantic_explorer_lists_wrong_hits_with_and_without_the_guard():
    scores = lab09.semantic_scores(embedder=BagOfLetters())
    plain, guarded = lab09.served_at(scores, 0.8, False), lab09.served_at(scores, 0.8, True)
    assert len(guarded[1]) <= len(plain[1]) and plain[1]  # the guard removes wrong hits
    w = lab09.SemanticExplorer(scores, threshold=0.8)
    assert "WRONG" in w.readout.value
    w.guarded.value = True
    assert f"{len(guarded[1])}/90 near-misses" in w.readout.value
    w.threshold.value = 1.0
    assert_titled(lab09.semantic_figure(scores, 0.9))


def test_levers_table_and_figure():
    levers = {"prompt caching": (0.5, "x"), "cascade": (0.25, "y")}
    assert lab09.blended_price(Prices(), 3, 1) == pytest.approx((3 * 1 + 4) / 4)
    table = lab09.levers_table(levers, 2.0)
    assert "50.0%" in table and "1.000" in table
    assert_titled(lab09.levers_figure(levers, 2.0), categorical_x=True)


def test_cascade_points_use_the_given_cost_and_the_explorer_moves():
    small = Answers(["a"] * 4, [True, False, True, False], [-0.1, -2.0, -0.5, -3.0])
    large = Answers(["b"] * 4, [True, True, True, False], [0.0] * 4)
    runs = {"small": small, "large": large, "cost_small": 0.3}
    pts = dec.cascade_points(runs, ex.cascade_expected_cost)
    assert pts[0].cost == pytest.approx(0.3) and pts[-1].cost == pytest.approx(1.3)
    doubled = dec.cascade_points(runs, lambda s, lg, r: 2 * (s + r * lg))
    assert doubled[-1].cost == pytest.approx(2.6)
    w = dec.CascadeExplorer(runs, ex.cascade_expected_cost)
    w.threshold.value = 0.0
    assert "100%</b> escalated" in w.readout.value and "1.30</b>" in w.readout.value
    w.threshold.value = w.threshold.min
    assert "<b>0%</b> escalated" in w.readout.value
    assert_titled(dec.cascade_figure(pts, small, large, pts[1]))
    save, why = dec.cascade_summary(pts, runs)
    assert 0 <= save <= 1 and why


def test_schema_explorer_with_learner_masks_is_valid_and_equals_the_reference(code_s):
    model, tok = code_s
    prompt = dec.prompt_for(tok, chat=False)
    mine = dec.free_and_constrained(model, tok, prompt, dec.SCHEMA, 40, ex.token_mask)
    ref = dec.free_and_constrained(model, tok, prompt, dec.SCHEMA, 40)
    assert mine["constrained_valid"] == "valid" and mine["constrained"] == ref["constrained"]
    w = dec.SchemaExplorer(model, tok, prompt, 24, ex.token_mask,
                           schema={"enum": ["yes", "no"]})
    assert "constrained</b> (valid)" in w.readout.value
    w.schema.value = json.dumps({"type": "integer", "minimum": 3})  # refused by name
    assert "schema refused" in w.readout.value


def test_bucket_burst_matches_the_server_and_draws():
    reqs = traffic.burst_requests(20, 20, 5.0)
    rows = traffic.run_bucket(ex.token_bucket, 2.0, 5.0, reqs)
    assert sum(ok for _, ok, _ in rows) == 15
    assert [ok for _, ok, _ in rows] == [ok for ok, _ in traffic.package_decisions(2.0, 5.0, reqs)]
    assert_titled(traffic.bucket_figure(rows, 2.0, 5.0))


def test_autoscale_explorer_and_headroom_figure():
    trace = traffic.lab_trace(1.0)
    w = traffic.AutoscaleExplorer(trace)
    first = w.readout.value
    assert "p99" in first and "$" in first
    w.policy.value = "fixed at peak"
    assert w.readout.value != first
    w.policy.value = "queue length (KEDA)"
    w.headroom.value = 0.6
    fixed, scaled = (traffic.run_policy(trace, k, 0.3, 60.0) for k in ("fixed", "target"))
    assert scaled.cost < fixed.cost
    assert_titled(traffic.fleet_figure(scaled, "t"))
    fig = traffic.headroom_figure(trace, cold_starts=(10.0,), headrooms=(0.1, 0.5))
    assert_titled(fig) and len(fig.data) == 1
