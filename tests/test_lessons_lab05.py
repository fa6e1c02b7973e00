"""Lab 05's measurement helpers: sampler comparison, chi-square, sweeps, figures, widgets."""

import pytest
import torch

from infer_lab.config import ModelConfig
from infer_lab.exercises.speculative import accept_or_resample, temperature_probs
from infer_lab.exercises.speculative_verify import verify_draft
from infer_lab.generate import GREEDY, Sampling
from infer_lab.lessons import lab05_speculative as sw
from infer_lab.lessons import lab05_speculative_distribution as sc
from infer_lab.lessons import lab05_speculative_pairs as sp
from infer_lab.model import Transformer
from infer_lab.scale import SCALES
from infer_lab.speculative import (PromptLookupDrafter, speculative_decode, theoretical_speedup,
                                   verify)


def tiny(seed, vocab=50, layers=2, d=32):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, n_layer=layers, n_head=2, d_model=d,
                                   max_seq_len=128)).eval()


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1, layers=1)


class Tok:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
Q = torch.tensor([0.1, 0.3, 0.3, 0.1, 0.1, 0.1])


def test_sizes_cover_every_scale():
    assert set(sw.SIZES) == set(SCALES)
    for s in sw.SIZES.values():
        assert list(s["ks"]) == sorted(s["ks"]) and s["repeats"] >= 1


def test_correct_rule_keeps_the_distribution():
    counts = sc.sample_first_tokens(P, Q, 4000, sc.RULES[sc.CORRECT], seed=0)
    assert int(counts.sum()) == 4000 and counts.shape == P.shape
    assert sc.chi_square(counts, P)[2] > 1e-3


@pytest.mark.parametrize("rule", [r for r in sc.RULES
                                  if r != sc.CORRECT and r not in sc.FIRST_TOKEN_BLIND])
def test_wrong_rules_are_caught_by_the_chi_square(rule):
    counts = sc.sample_first_tokens(P, Q, 4000, sc.RULES[rule], seed=0)
    assert int(counts.sum()) == 4000
    assert sc.chi_square(counts, P)[2] < 1e-6


def test_chi_square():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    stat, df, pval = sc.chi_square(torch.tensor([500, 300, 200, 0]), probs)
    assert stat == pytest.approx(0.0) and df == 2 and pval == pytest.approx(1.0)
    assert sc.chi_square(torch.tensor([500, 300, 199, 1]), probs)[2] == 0.0  # impossible token
    _, _, pval = sc.chi_square(torch.tensor([700, 200, 100, 0]), probs)
    assert pval < 1e-10


def test_compare_samplers_and_its_figure(pair):
    target, draft = pair
    cmp = sc.compare_samplers(target, draft, [1, 2, 3], 300, temperature=1.0)
    assert int(cmp.target_counts.sum()) == int(cmp.spec_counts.sum()) == 300
    assert cmp.p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= v <= 1 for v in cmp.pvalues)
    fig = sc.distribution_figure(cmp, lambda t: Tok().decode([t]), top=5)
    assert len(fig.data) == 3 and len(fig.data[0].x) == 6  # 5 tokens + "all others"
    assert sum(fig.data[0].y) == pytest.approx(1.0)


def test_time_forward_and_its_figure(pair):
    target, _ = pair
    secs = sw.time_forward(target, [1, 2, 3, 4, 5], [1, 3], repeats=1)
    assert len(secs) == 2 and all(s > 0 for s in secs)
    fig = sw.forward_cost_figure([1, 3], secs)
    assert fig.data[1].y[1] == pytest.approx(3 * secs[0] * 1e3)


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_sweep_has_one_point_per_k_with_theory_from_measured_alpha_and_c(pair, drafter):
    target, draft = pair
    d = draft if drafter == "model" else PromptLookupDrafter()
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 6, 7]]
    pts = sw.sweep(target, d, prompts, [1, 3], 12, GREEDY, repeats=1)
    assert [p.k for p in pts] == [1, 3]
    for p in pts:
        assert 0 <= p.alpha <= 1 and p.speedup > 0 and p.c >= 0
        assert p.theory == pytest.approx(theoretical_speedup(p.alpha, p.k, p.c))
        assert len(p.by_position) <= p.k
    assert "k=3" in sw.points_table(pts)
    assert sw.best_point(pts) in pts


def test_self_draft_accepts_everything(pair):
    target, _ = pair
    (pt,) = sw.sweep(target, target, [[1, 2, 3]], [2], 9, GREEDY, repeats=1)
    assert pt.alpha == 1.0 and pt.expected_tokens == 3.0


def test_figures_build():
    pts = [sw.SweepPoint(k, 0.6, 0.5, 1.6, 0.3, 1.1) for k in (1, 2, 4)]
    fig = sw.speedup_figure({"a": pts, "b": pts}, k_selected=2)
    assert len(fig.data) == 8  # measured, theory, alpha, accepted/proposed per draft
    fig = sw.breakeven_figure({"a": (0.6, 0.3, 1.1), "b": (1.0, 1.8, 0.6)}, k_max=4)
    assert [t.type for t in fig.data] == ["contour", "contour", "scatter", "scatter"]


def test_drafts_build(pair):
    target, draft = pair
    assert sw.DRAFTS["code-s"](target, draft) is draft
    assert isinstance(sw.DRAFTS["prompt lookup"](target, draft), PromptLookupDrafter)
    rng = torch.get_rng_state()
    untrained = sw.DRAFTS["untrained code-s"](target, draft)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is left alone
    assert untrained.config == draft.config


def test_explorers_measure_once_per_setting(pair):
    target, draft = pair
    sizes = {"n_new": 8, "ks": (1, 2), "repeats": 1}
    ex = sw.SpeedupExplorer(target, draft, [[1, 2, 3, 4]], sizes, temperatures=(0.0, 1.0))
    assert list(ex.results) == [("code-s", 0.0)]
    ex.k.value = 2  # reading another k measures nothing new
    assert len(ex.results) == 1 and "k=2" in ex.readout.value
    ex.draft.value = "prompt lookup"
    ex.temperature.value = 1.0
    assert set(ex.results) == {("code-s", 0.0), ("prompt lookup", 0.0), ("prompt lookup", 1.0)}
    assert len(ex.figure.data) == 4  # one draft measured at temperature 1
    dist = sc.DistributionExplorer(target, draft, Tok(), [1, 2], n=200)
    dist.rule.value = "always keep the draft"
    assert dist.result.rule == "always keep the draft" and "p-value" in dist.readout.value


# -- the learner's rule drives the distribution tests (issue 17) ------------------------------

RULE = sc.as_rule(verify_draft, accept_or_resample)  # the reference exercises, as a rule


@pytest.mark.parametrize("with_q", [True, False])
def test_as_rule_replays_verify(with_q):
    g = torch.Generator().manual_seed(0)
    for seed in range(40):
        p = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64) * 2, -1)
        q = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), -1)
        draft = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(3)]
        qq = q if with_q else None
        assert RULE(p, qq, draft, False, torch.Generator().manual_seed(seed)) == verify(
            p, qq, draft, False, torch.Generator().manual_seed(seed))


def test_as_rule_refuses_an_inconsistent_answer():
    bad = sc.as_rule(lambda p, q, draft, gen, accept: ([5, 5], 1), accept_or_resample)
    with pytest.raises(ValueError, match="accepted drafts"):
        bad(P[None].repeat(2, 1), Q[None], [0], False, None)


def test_speculative_decode_runs_the_rule_it_is_given(pair):
    target, draft = pair
    s = Sampling(temperature=1.0, seed=3)
    calls = []

    def counting(*args):
        calls.append(1)
        return RULE(*args)

    mine, st = speculative_decode(target, draft, [1, 2, 3], 20, k=3, sampling=s, rule=counting)
    ref, st_ref = speculative_decode(target, draft, [1, 2, 3], 20, k=3, sampling=s)
    assert mine == ref and len(calls) == st.target_calls == st_ref.target_calls


def test_compare_samplers_takes_a_rule_and_a_softmax(pair):
    target, draft = pair
    cmp = sc.compare_samplers(target, draft, [1, 2, 3], 300, 1.0, RULE,
                              probs=temperature_probs, label="mine")
    ref = sc.compare_samplers(target, draft, [1, 2, 3], 300, 1.0)
    assert cmp.rule == "mine" and torch.equal(cmp.spec_counts, ref.spec_counts)
    assert torch.allclose(cmp.p, ref.p, atol=1e-6)


@pytest.fixture(scope="module")
def smooth_pair():
    return tiny(3, vocab=8), tiny(4, vocab=8, layers=1)


def test_first_token_blind_rules_pass_the_one_token_test():
    for name in sc.FIRST_TOKEN_BLIND:
        counts = sc.sample_first_tokens(P, Q, 4000, sc.RULES[name], seed=0)
        assert sc.chi_square(counts, P)[2] > 1e-3


def test_pair_test_accepts_the_right_rules_and_catches_the_bonus_off_by_one(smooth_pair):
    target, draft = smooth_pair
    rules = {"library": sc.CORRECT, "yours": RULE, "off by one": sc.FIRST_TOKEN_BLIND[0],
             "keep all": "always keep the draft"}
    res = sp.compare_pairs(target, draft, [1, 2], 3000, rules)
    pv = {name: [t.pvalue for t in tests] for name, tests in res.items()}
    assert min(pv["library"]) > 1e-3 and min(pv["yours"]) > 1e-3, pv
    assert pv["off by one"][0] < 1e-6 and pv["off by one"][1] > 1e-3, pv  # k = 1 only
    assert max(pv["keep all"]) < 1e-6, pv
    assert all(sum(t.counts.values()) == 3000 for tests in res.values() for t in tests)


def test_pair_sampling_needs_k_1_or_2(smooth_pair):
    target, draft = smooth_pair
    rows = sp.NextRows(target, draft, [1], 1.0)
    with pytest.raises(ValueError, match="k must be"):
        sp.sample_first_pairs(rows, torch.full((8,), 1 / 8), torch.full((8,), 1 / 8), 10, 3,
                              verify)


def test_distribution_explorer_offers_the_learners_rule_first(pair):
    target, draft = pair
    dist = sc.DistributionExplorer(target, draft, Tok(), [1, 2], n=200, rules={sc.YOURS: RULE},
                                   probs=temperature_probs)
    assert dist.rule.options[0] == sc.YOURS and dist.result.rule == sc.YOURS
