"""Labs 03 and 04's exercises: each reference equals the package implementation it
teaches (issue 17, section 5), equivalent correct answers pass, unstable softmaxes fail,
and the package takes the learner's piece as an argument."""

import copy

import numpy as np
import pytest
import torch

from infer_lab import distill as pkg
from infer_lab import prune
from infer_lab.config import get_config
from infer_lab.exercises import EXERCISES
from infer_lab.exercises import distillation as ex04
from infer_lab.exercises import distillation_step as ex04s
from infer_lab.exercises import pruning as ex03
from infer_lab.exercises import pruning_structured as ex03s
from infer_lab.model import Transformer


@pytest.fixture(autouse=True)
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_LAB_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = get_config("code-s", n_layer=2, d_model=32, n_head=2, n_kv_head=2, d_ff=48,
                     vocab_size=64, max_seq_len=64)
    return Transformer(cfg).eval()


def _check(name, fn):
    return EXERCISES[name].check(fn, seed=0, verbose=False, record=False)


# -- lab 03: the threshold of the text, and the answers equivalent to it ---------------------
def _kthvalue(w, sparsity):
    k = round(sparsity * w.numel())
    a = w.abs()
    if k == 0:
        return torch.ones_like(w, dtype=torch.bool)
    return a > a.flatten().kthvalue(k).values  # tau = the k-th smallest |w|, as the text says


def _sorted(w, sparsity):
    k = round(sparsity * w.numel())
    a = w.abs().flatten().sort().values
    return w.abs() > (a[k - 1] if k else -1.0)


def _topk(w, sparsity):
    k = round(sparsity * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[w.abs().flatten().topk(k, largest=False).indices] = False
    return mask.view(w.shape)


def _quantile_lower(w, sparsity):
    # quantile with the interpolation and the q that land on the k-th smallest: the same tau
    k, n = round(sparsity * w.numel()), w.numel()
    if k == 0:
        return torch.ones_like(w, dtype=torch.bool)
    q = (k - 1) / (n - 1) if n > 1 else 0.0
    return w.abs() > torch.quantile(w.abs().flatten().double(), q, interpolation="nearest")


@pytest.mark.parametrize("fn", [_kthvalue, _sorted, _topk, _quantile_lower])
def test_equivalent_thresholds_pass(fn):
    r = _check("magnitude_mask", fn)
    assert r.passed, r.message


def test_default_quantile_fails_with_its_hint():
    def quantile(w, sparsity):
        return w.abs() > torch.quantile(w.abs().flatten(), sparsity)

    r = _check("magnitude_mask", quantile)
    assert not r and r.mistake == "interpolated quantile", r.message


def test_magnitude_reference_is_the_package_rule(tiny):
    for seed, s in [(0, 0.0), (1, 0.3), (2, 0.5), (3, 0.9), (4, 1.0)]:
        w = torch.randn(12, 20, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ex03.magnitude_mask(w, s), prune.magnitude_mask(w, s))
    for scope in ("global", "layer"):
        want = prune.magnitude_masks(tiny, 0.6, scope)
        got = prune.magnitude_masks(tiny, 0.6, scope, mask_fn=ex03.magnitude_mask)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_mask_2_4_reference_is_the_package_rule(tiny):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ex03.mask_2_4(w), prune.mask_2_4(w))
    a = prune.prune_2_4(copy.deepcopy(tiny))
    b = prune.prune_2_4(copy.deepcopy(tiny), mask_fn=ex03.mask_2_4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_package_rejects_a_bad_mask_fn(tiny):
    with pytest.raises(ValueError, match="bool tensor"):
        prune.magnitude_masks(tiny, 0.5, mask_fn=lambda w, s: w.abs() * 0)
    with pytest.raises(ValueError, match="2:4"):
        prune.masks_2_4(tiny, mask_fn=lambda w: torch.ones_like(w, dtype=torch.bool))


# -- lab 03: structured pruning ----------------------------------------------------------------
def test_remove_neurons_reference_is_the_package_cut(tiny):
    m = tiny.layers[0].mlp
    drop = torch.tensor([3, 0, 17, 40])
    want = prune.remove_neurons(m.w1.weight, m.w3.weight, m.w2.weight, drop)
    got = ex03s.remove_neurons(m.w1.weight, m.w3.weight, m.w2.weight, drop)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    calib = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(1))
    a = prune.prune_mlp(tiny, 0.5, "activation", calib_ids=calib)
    b = prune.prune_mlp(tiny, 0.5, "activation", calib_ids=calib,
                        remove=ex03s.remove_neurons)
    x = torch.randint(0, 64, (2, 12))
    assert b.config.d_ff == 24 and torch.equal(a(x), b(x))


def test_remove_neurons_in_any_order_passes():
    def reversed_order(w1, w3, w2, drop):
        keep = [j for j in range(w1.shape[0]) if j not in set(drop.tolist())][::-1]
        return w1[keep], w3[keep], w2[:, keep]

    assert _check("remove_neurons", reversed_order).passed


def test_remove_neurons_cases_leave_the_output_unchanged():
    ex = EXERCISES["remove_neurons"]
    for case in ex.cases(seed=0):
        w1, w3, w2, drop = case.args
        x = ex03s._probe(w1)
        full = ex03s.swiglu(x, w1, w3, w2)
        cut = ex03s.swiglu(x, *ex03s.remove_neurons(w1, w3, w2, drop))
        torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def test_remove_neurons_wrong_answers():
    r = _check("remove_neurons", lambda w1, w3, w2, drop: (w1, w3))
    assert not r and "TypeError" in r.message
    r = _check("remove_neurons", lambda w1, w3, w2, d: tuple(
        t.float() for t in ex03s.remove_neurons(w1, w3, w2, d)) if w1.dtype == torch.float64
        else ex03s.remove_neurons(w1, w3, w2, d))
    assert not r and "dtype" in r.message


def test_neuron_importance_reference_is_the_package_score(tiny):
    calib = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(2))
    want = prune.mlp_scores(tiny, "activation", calib)
    got = prune.mlp_scores(tiny, ex03s.neuron_importance, calib)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="calib_ids"):
        prune.mlp_scores(tiny, ex03s.neuron_importance)
    with pytest.raises(ValueError, match="scores"):
        prune.mlp_scores(tiny, lambda w1, w3, w2, x: x.sum(), calib)


def test_lab03_predictions_explain_their_numbers():
    from infer_lab.exercises import PREDICTIONS

    p = PREDICTIONS["prune_mlp_params_removed"]
    cfg = get_config("code-m")
    share = 100 * cfg.n_layer * 3 * cfg.d_model * (cfg.d_ff // 2) / prune.n_params(
        Transformer(cfg))
    assert p.close_enough(31.0, share) and "31%" in p.explain


# -- lab 04: soft targets and the KD loss, stable, equal to infer_lab.distill -----------------


def _logits(seed, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [1.0, 5.0, 300.0])
def test_soft_targets_and_kd_loss_equal_the_package(scale):
    for T in (0.5, 1.0, 2.0, 8.0):
        z = _logits(0, 3, 7, 40, scale=scale)
        torch.testing.assert_close(ex04.soft_targets(z, T), pkg.soft_targets(z, T))
        s, t = _logits(1, 3, 7, 40, scale=scale), _logits(2, 3, 7, 40, scale=3 * scale)
        want = pkg.kd_loss(s, t, T)
        assert torch.isfinite(want)
        torch.testing.assert_close(ex04.kd_loss(s, t, T), want, rtol=1e-5, atol=1e-6)


def test_large_logit_cases_break_a_naive_softmax():
    for name, mistake in (("soft_targets", "unstable exp"), ("kd_loss", "log of softmax")):
        ex = EXERCISES[name]
        m = next(m for m in ex.mistakes if m.name == mistake)
        broken = [c for c in ex.fixed_cases
                  if not torch.isfinite(torch.as_tensor(ex._call(m.fn, c))).all()]
        assert broken, f"{name}: no case overflows the naive version"
        assert all(torch.isfinite(torch.as_tensor(ex._call(ex.reference, c))).all()
                   for c in broken)
    r = _check("soft_targets", lambda z, T: torch.exp(z / T) / torch.exp(z / T).sum(
        -1, keepdim=True))
    assert not r and r.mistake == "unstable exp", r.message

    def shifted(z, T):  # a stable hand-written softmax passes
        z = z / T
        e = (z - z.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    assert _check("soft_targets", shifted).passed

    def kl_div(s, t, T):  # the library's KL, 'batchmean' on a (positions, V) view
        V = s.shape[-1]
        return T * T * torch.nn.functional.kl_div(
            torch.log_softmax(s / T, -1).reshape(-1, V), torch.log_softmax(t / T, -1).reshape(
                -1, V), reduction="batchmean", log_target=True)

    assert _check("kd_loss", kl_div).passed


# -- lab 04: one distillation step ---------------------------------------------------------------
def test_distill_step_equals_one_step_of_the_package_loop():
    from infer_lab.distill.loop import DistillConfig, _objective
    from infer_lab.zoo.loop import Run, _step

    case = ex04s._step_case(7, batch=2, seq=6, T=2.0)
    student, teacher, opt, x, T, _ = copy.deepcopy(case.args)
    for p in student.parameters():
        p.grad = torch.ones_like(p)  # stale gradients: both must clear them
    mine = copy.deepcopy(student)
    mine_opt = torch.optim.SGD(mine.parameters(), lr=0.5, momentum=0.9)
    loss = ex04s.distill_step(mine, teacher, mine_opt, x, T, pkg.kd_loss)
    cfg = DistillConfig(loss="kd", temperature=T, kd_weight=1.0)
    objective, _ = _objective(student, teacher, cfg)
    y = torch.zeros_like(x)  # the CE term is weighted 0 at kd_weight 1
    value = _step(Run(student, opt, torch.Generator()), objective, (x, y), lr=0.5,
                  grad_clip=float("inf"), after_step=None)
    assert loss == pytest.approx(value, rel=1e-6)
    for a, b in zip(mine.parameters(), student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_step_wrong_answers_are_named():
    r = _check("distill_step", lambda *a: None)
    assert not r and "TypeError" in r.message
    r = _check("distill_step", ex04s._teacher_tracked)
    assert r.mistake == "teacher tracked" and "teacher collected gradients" in r.message


def test_distill_takes_the_learners_soft_loss(tiny):
    from infer_lab.distill import DISTILL_PRESETS, distill

    ids = np.random.default_rng(0).integers(0, 64, 4000)
    calls = []

    def soft(s, t, T):
        calls.append(T)
        return ex04.kd_loss(s, t, T)

    cfg = DISTILL_PRESETS["tiny"]
    cfg = type(cfg)(**{**cfg.__dict__, "loss": "kd", "temperature": 2.0})
    a = distill(copy.deepcopy(tiny), tiny, cfg, ids, ids, progress=False)
    b = distill(copy.deepcopy(tiny), tiny, cfg, ids, ids, progress=False, soft_loss=soft)
    assert calls and set(calls) == {2.0}
    assert b.final_valid_loss == pytest.approx(a.final_valid_loss, rel=1e-4)


def test_lab04_predictions_are_asked_with_tolerances():
    from infer_lab.exercises import PREDICTIONS

    mine = [p for p in PREDICTIONS.values() if p.lab == "04_distillation"]
    assert len(mine) >= 2 and all(p.explain for p in mine)
