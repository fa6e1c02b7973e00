"""Lab 04's figures, widgets and demo drivers."""

import plotly.graph_objects as go
import pytest
import torch

from infer_lab.lessons import lab04_distillation as dviz


def _titled(fig: go.Figure) -> None:
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_soft_targets_widgets_and_entropy():
    logits = torch.tensor([4.0, 2.0, 1.0, 0.0, -1.0])
    labels = list("abcde")
    fig = dviz.soft_targets_figure(logits, labels, (1.0, 4.0), top_k=3)
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["'a'", "'b'", "'c'"]
    hot, cold = (dviz.entropy_bits(torch.softmax(logits / T, -1)) for T in (4.0, 1.0))
    assert hot > cold  # a higher temperature spreads the distribution
    ex = dviz.TemperatureExplorer(logits, labels, top_k=3)
    ex.temperature.value = 8.0
    assert "T = <b>8" in ex.readout.value
    assert dviz.entropy_bits(torch.full((8,), 1 / 8)) == pytest.approx(3.0)


def test_grad_norm_with_t2_is_flat_without_it_falls():
    from infer_lab.exercises.distillation import kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 50, generator=g), 3 * torch.randn(16, 50, generator=g)
    temps = (2.0, 8.0, 32.0)
    n = dviz.grad_norm_vs_temperature(s, t, temps, kd_loss)
    assert n["without T²"][-1] < n["without T²"][0] / 50  # falls like 1/T^2
    assert n["with T²"][-1] > n["with T²"][0] / 3  # stays the same order of magnitude
    _titled(dviz.grad_norm_figure(temps, n))


def test_forward_kl_covers_reverse_kl_seeks_a_mode():
    x = torch.linspace(-6, 6, 121)
    p = dviz.bimodal(x)
    fwd, rev = (dviz.fit_gaussian(p, x, d, n_mu=121, n_sigma=40) for d in ("forward", "reverse"))
    assert abs(float(fwd.sum()) - 1) < 1e-5 and abs(float(rev.sum()) - 1) < 1e-5

    def spread(q):
        return float((q * (x - (q * x).sum()) ** 2).sum()) ** 0.5

    assert spread(fwd) > 1.5 * spread(rev)  # forward covers both modes, reverse picks one
    mean_rev = float((rev * x).sum())
    assert min(abs(mean_rev - 2.5), abs(mean_rev + 2.0)) < 0.3  # on a mode
    f_kl, r_kl = dviz.kl_both(p, fwd), dviz.kl_both(p, rev)
    assert f_kl[0] <= r_kl[0] and r_kl[1] <= f_kl[1]  # each wins its own objective
    with pytest.raises(ValueError, match="direction"):
        dviz.fit_gaussian(p, x, "sideways")
    _titled(dviz.kl_fit_figure(x, p, {"forward": fwd, "reverse": rev}))


def test_live_curves_follow_the_callback():
    curves = dviz.LiveCurves()
    cb_a, cb_b = curves.callback("CE"), curves.callback("KD")
    cb_a(10, {"valid_loss": 3.0})
    cb_a(20, {"valid_loss": 2.5})
    cb_b(10, {"valid_loss": 2.8})
    assert list(curves.figure.data[0].y) == [3.0, 2.5] and list(curves.figure.data[1].x) == [10]
    assert curves.runs["KD"] == [(10, 2.8)]


def test_final_bars_and_live_start():
    fig = dviz.final_bars_figure({"CE": 3.0, "KD": 2.5}, "t", "perplexity", {"teacher": 2.0})
    assert list(fig.data[0].y) == [3.0, 2.5] and fig.layout.yaxis.title.text == "perplexity"
    curves = dviz.LiveCurves()
    curves.callback("KD", start=4.0)(5, {"valid_loss": 3.0})
    assert list(curves.figure.data[0].x) == [0, 5]


@pytest.fixture(scope="module")
def pair():
    from infer_lab.config import get_config
    from infer_lab.model import Transformer

    torch.manual_seed(0)
    small = get_config("code-s", n_layer=1, d_model=16, n_head=2, n_kv_head=2, d_ff=32,
                       vocab_size=64, max_seq_len=128)
    big = get_config("code-s", n_layer=2, d_model=32, n_head=2, n_kv_head=2, d_ff=64,
                     vocab_size=64, max_seq_len=128)
    return Transformer(small).eval(), Transformer(big).eval()


def test_train_with_step_runs_the_given_step(pair):
    import copy

    import numpy as np

    from infer_lab.distill import DISTILL_PRESETS, kd_loss
    from infer_lab.exercises.distillation_step import distill_step
    from infer_lab.lessons import lab04_distillation_payoff as pay

    student, teacher = copy.deepcopy(pair[0]), pair[1]
    ids = np.random.default_rng(0).integers(0, 64, 3000)
    calls, seen = [], []

    def step(*args):
        calls.append(args[4])
        return distill_step(*args)

    before = [p.detach().clone() for p in student.parameters()]
    loss = pay.train_with_step(student, teacher, step, kd_loss, DISTILL_PRESETS["tiny"], ids,
                               ids, callback=lambda s, r: seen.append((s, r["valid_loss"])))
    assert len(calls) == DISTILL_PRESETS["tiny"].steps and [s for s, _ in seen] == [4, 8]
    assert loss == seen[-1][1] and not student.training
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_payoff_measures_speed_and_acceptance(pair):
    import numpy as np

    from infer_lab.lessons import lab04_distillation_payoff as pay

    small, big = pair
    prompts = pay.prompts_from(np.arange(200) % 64, 2, length=8)
    assert len(prompts) == 2 and all(len(p) == 8 for p in prompts)
    out = pay.measure_payoff(big, {"self": big, "small": small}, prompts, n_new=8,
                             decode_tokens=4, repeats=1)
    assert set(out) == {"teacher", "self", "small"}
    assert out["self"]["alpha"] == pytest.approx(1.0)  # the teacher agrees with itself
    assert 0 <= out["small"]["alpha"] <= 1 and min(v["tokens_per_s"] for v in out.values()) > 0
    losses = {"teacher": 2.0, "self": 2.0, "small": 3.0}
    ex = pay.PayoffExplorer(out, losses)
    assert "alpha = <b>1.00" in ex.readout.value
    ex.student.value = "small"
    ex.k.value = 2
    _, _, s = ex.speedup("small", 2)
    assert f"{s:.2f}x" in ex.readout.value and len(ex.figure.data) == 3
    _titled(ex.figure)
