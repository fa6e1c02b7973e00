"""Lab 03's figures, widgets and demo drivers, on a tiny random model."""

import plotly.graph_objects as go
import pytest
import torch

from infer_lab import timing as metrics  # decode timing lives in infer_lab.timing
from infer_lab.config import get_config
from infer_lab.lessons import lab03_pruning as pviz
from infer_lab.lessons import lab04_distillation as dviz
from infer_lab.model import Transformer
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
    tps = metrics.decode_tokens_per_s({"a": tiny, "b": tiny}, [1, 2, 3], 4, repeats=1, batch=2)
    assert set(tps) == {"a", "b"} and min(tps.values()) > 0


def test_n_params_counts_tied_weights_once(tiny):
    assert pviz.n_params(tiny) == sum(p.numel() for p in tiny.parameters())
    m = Transformer(tiny.config)
    m.layers[0].mlp.w1.weight.data.zero_()
    assert pviz.n_params(m, nonzero=True) == pviz.n_params(m) - m.layers[0].mlp.w1.weight.numel()


def test_scheme_toggle_lights_up_one_scheme():
    from infer_lab.lessons import lab03_pruning_schemes as schemes

    pts = {"dense": (100.0, 5.0), "u50": (99.0, 6.0), "MLP -50%": (140.0, 8.0),
           "MLP -50% + distill": (140.0, 6.5)}
    tog = schemes.SchemeToggle(pts, {"unstructured": ["u50"],
                                     "structured + distill": ["MLP -50%", "MLP -50% + distill"]})
    names = [t.name for t in tog.figure.data]
    assert "u50" in names and "other schemes" in names and "1.20x its perplexity" in tog.readout.value
    tog.scheme.value = "structured + distill"
    names = [t.name for t in tog.figure.data]
    assert "MLP -50% + distill" in names and "u50" not in names
    assert "1.40x the dense speed" in tog.readout.value
    _titled(tog.figure)
    assert tog.figure.layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="no measured point"):
        schemes.SchemeToggle(pts, {"x": ["missing"]})
