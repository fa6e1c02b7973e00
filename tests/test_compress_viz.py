"""Labs 03 and 04's figures, widgets and measurement helpers, on a tiny random model."""

import plotly.graph_objects as go
import pytest
import torch

from infer_lab.config import get_config
from infer_lab.distill import viz as dviz
from infer_lab.model import Transformer
from infer_lab.prune import viz as pviz
from infer_lab.scale import SCALES


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = get_config("code-s", n_layer=1, d_model=32, n_head=2, n_kv_head=2, d_ff=64,
                     vocab_size=64, max_seq_len=64)
    return Transformer(cfg).eval()


def _titled(fig: go.Figure) -> None:
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_lab_sizes_cover_every_scale():
    for name in SCALES:
        s = pviz.lab_sizes(name)
        assert 0.0 in s.sparsities and all(0 <= x < 1 for x in s.sparsities)
        assert dviz.lab_sizes(name).steps > 0


def test_sparsity_explorer_measures_once_and_redraws(tiny):
    calls = []

    def prune(m, s):  # zero a fraction of the first MLP matrix
        calls.append(s)
        w = m.layers[0].mlp.w1.weight
        w.data[: int(s * w.shape[0])] = 0

    ids = torch.randint(0, 64, (65,)).tolist()
    ex = pviz.SparsityExplorer(tiny, ids, 32, prune, sparsities=(0.0, 0.5))
    assert set(ex.points) == {0.0, 0.5} and calls == [0.5]  # 0%: the dense model itself
    ex.sparsity.value = 0.9  # a new point: measured and added to the curve
    assert 0.9 in ex.points and "90%" in ex.readout.value
    ex.sparsity.value = 0.5  # cached: not pruned again
    assert calls.count(0.5) == 1
    assert len(ex.figure.data) == 2 and len(ex.figure.data[0].x) == 3
    assert tiny.layers[0].mlp.w1.weight.abs().sum() > 0  # the dense model is untouched


def test_figures_have_titled_axes():
    w = torch.randn(8, 16)
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, ::2] = True
    _titled(pviz.magnitude_histogram_figure(w, 0.5))
    fig = pviz.pattern_2_4_figure(w, mask)
    _titled(fig)
    z = torch.tensor([[float("nan") if v is None else v for v in row] for row in fig.data[0].z])
    assert z.isnan().sum() == 64 and z.shape == (8, 16)  # pruned cells are blank
    _titled(pviz.sparsity_curve_figure({"a": {0.0: 5.0, 0.5: 6.0}}, marker=(0.5, 6.0)))
    _titled(pviz.sparse_matmul_figure([0.5, 0.9], {"dense": [1.0, 1.0], "CSR": [2.0, 0.5]},
                                      (4, 4)))


def test_time_sparse_matmul_and_decode_speed(tiny):
    t = pviz.time_sparse_matmul(32, 16, sparsities=(0.5, 0.99), repeats=2)
    assert set(t) == {"dense", "dense, zeros kept", "CSR sparse"}
    assert all(len(v) == 2 and min(v) > 0 for v in t.values())
    tps = pviz.decode_tokens_per_s({"a": tiny, "b": tiny}, [1, 2, 3], 4, repeats=1, batch=2)
    assert set(tps) == {"a", "b"} and min(tps.values()) > 0


def test_n_params_counts_tied_weights_once(tiny):
    assert pviz.n_params(tiny) == sum(p.numel() for p in tiny.parameters())
    m = Transformer(tiny.config)
    m.layers[0].mlp.w1.weight.data.zero_()
    assert pviz.n_params(m, nonzero=True) == pviz.n_params(m) - m.layers[0].mlp.w1.weight.numel()


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
