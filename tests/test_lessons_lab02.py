"""Lab 02's lessons: Pareto points are sane, figures build, the explorer's sliders add points."""

from dataclasses import replace

import pytest
import torch

from infer_lab.config import get_config
from infer_lab.exercises import quantization as ex
from infer_lab.lessons import lab02_quantization as explore  # the Pareto explorer
from infer_lab.lessons import lab02_quantization_explain as explain
from infer_lab.lessons import lab02_quantization_storage as storage
from infer_lab.model import Transformer
from infer_lab.quant.catalog import eligible, stored_bytes
from infer_lab.quant.int8 import Int8Linear
from infer_lab.quant.packed import pack_layer
from infer_lab.quant.primitives import pack_int4, quantize
from infer_lab.scale import QuantizationSizes

TINY = QuantizationSizes(ppl_tokens=64, seq_len=32, new_tokens=2, repeats=1, calib_seqs=2,
                         calib_len=16, awq_grid=2, awq_sample=32, linear_repeats=2,
                         schemes=("fp32", "int8", "int4-g64"), model="code-m")


@pytest.fixture(scope="module")
def tok():
    from infer_lab.zoo import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    """Random weights in code-m's block style, small: d_ff 192 takes g64 but not g128."""
    torch.manual_seed(0)
    cfg = get_config("code-m", n_layer=2, d_model=128, n_head=4, n_kv_head=2, d_ff=192,
                     max_seq_len=128, vocab_size=tok.vocab_size)
    return Transformer(cfg).float().eval()


@pytest.fixture(scope="module")
def explorer(tiny, tok):
    return explore.ParetoExplorer(tiny, tok, TINY, bits=4, group_size=64, progress=False)


def test_sizes_for_every_scale():
    from infer_lab.scale import SCALES

    assert set(explore.SIZES) == set(SCALES)
    assert explore.lab_sizes("ci") is explore.SIZES["ci"]
    assert all(s in explore.METHOD_NAMES for s in explore.SIZES["ci"].schemes)


def test_catalog_points_are_sane(explorer):
    p = explorer.points
    assert set(TINY.schemes) <= set(p)
    assert p["fp32"].bits_per_weight == 32.0
    assert p["int4-g64"].weight_bytes < p["int8"].weight_bytes < p["fp32"].weight_bytes
    assert p["int4-g64"].bits_per_weight == pytest.approx(4.25)
    for q in p.values():
        assert q.ppl > 1 and (q.tokens_per_s is None or q.tokens_per_s > 0)
    assert "fp32" in explorer.table() and "tokens/s" in explorer.table()


def test_slider_adds_a_cached_point(explorer):
    n = len(explorer.points)
    explorer.bits.value = 3  # a simulated width
    p = explorer.points["RTN int3-g64"]
    assert len(explorer.points) == n + 1 and explorer.latest == p.name
    assert p.kind == "simulated" and p.tokens_per_s is None
    assert p.bits_per_weight == pytest.approx(3.25)  # 3 + 16 / 64
    assert "RTN int3-g64" in explorer.readout.value
    explorer.group.value = 0  # per channel
    assert "RTN int3-channel" in explorer.points
    explorer.bits.value = 8  # real Int8Linear layers, timed
    r = explorer.points["RTN int8-channel"]
    assert r.kind == "rtn" and r.tokens_per_s > 0
    assert any(t.name == "your setting" for t in explorer.figure.data)
    before = len(explorer.points)
    explorer.bits.value = 3
    assert len(explorer.points) == before  # measured once, then read from the cache


def test_group_falls_back_to_a_divisor(tiny):
    assert explore.fit_group(704, 128) == 64 and explore.fit_group(256, 128) == 128
    m = explore.rtn_model(tiny, 4, 128)  # d_ff 192 is not a multiple of 128
    for name, lin in eligible(tiny).items():
        assert m.get_submodule(name).group_size == explore.fit_group(lin.in_features, 128)
    assert {m.get_submodule(n).group_size for n in eligible(tiny)} == {64, 128}


def test_simulated_bytes_match_packed_formula(tiny):
    m, size, bpw = explore.simulated_rtn(tiny, 2, 32)
    n = sum(lin.weight.numel() for lin in eligible(tiny).values())
    assert bpw == pytest.approx(2 + 16 / 32)
    assert size == stored_bytes(tiny) - 4 * n + int(n * bpw) // 8
    w = next(iter(eligible(m).values())).weight
    assert w.unique().numel() <= 4 * w.shape[0] * w.shape[1] // 32  # 4 levels per group


def test_pareto_front_and_figure():
    P = explore.ParetoPoint
    pts = [P("a", 100, 32, 5.0, 10.0), P("b", 30, 8, 5.1, 20.0), P("c", 35, 8.5, 5.3, 5.0),
           P("d", 20, 3, 9.0, None, "simulated")]
    assert [p.name for p in explore.pareto_front(pts)] == ["d", "b", "a"]
    fig = explore.pareto_figure(pts, highlight="d")
    names = [t.name for t in fig.data]
    assert "Pareto frontier" in names and "your setting" in names
    assert fig.layout.xaxis.type == "log" and "(" in fig.layout.xaxis.title.text
    assert "(" in explore.pareto_figure(pts, x="weight_mb").layout.xaxis.title.text


def test_explain_figures_build(tiny):
    grids = explain.number_grids()
    assert len(grids["int4 (absmax)"]) == 15 and len(grids["NF4 (QLoRA)"]) == 16
    assert grids["FP8 E4M3 (scaled)"].abs().max() == 1
    assert len(explain.number_grid_figure(grids, torch.randn(8, 64)).data) == 5
    rows = explain.granularity_errors(tiny, bits=(4,), groups=(32,))
    errs = {r["granularity"]: r["rel_error"] for r in rows}
    assert errs["g32"] < errs["channel"] < errs["tensor"]
    explain.granularity_figure(rows)
    e = explain.outlier_matmul_errors()
    assert e["outlier, LLM.int8() decomposition"] < e["outlier, int8 per-token absmax"]
    block = torch.arange(34, dtype=torch.uint8)
    fig = storage.block_bytes_figure(block, storage.Q8_0_FIELDS, "q8_0")
    assert fig.data[0].text[0][0] == "00" and fig.data[0].text[2][1] == "21"


def test_calibrated_errors_gptq_lowers_output_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 3, 64)  # uneven channels
    w = torch.randn(32, 64, generator=g)
    res, curve = explain.calibrated_errors(w, x, x, bits=3, group_size=32, awq_grid=3)
    assert res["GPTQ"]["output"] < res["RTN"]["output"]
    assert len(curve) == 3 and curve[0][0] == 0.0


def test_gptq_steps_match_the_package():
    from infer_lab.quant.gptq import gptq_quantize_weight, hessian

    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 16, generator=g) * torch.linspace(0.2, 2, 16)
    w = torch.randn(6, 16, generator=g)
    codes, s, snaps = explain.gptq_steps(w, x, bits=3)
    ref = gptq_quantize_weight(w, hessian(x), 3, None)
    assert torch.equal(codes.to(torch.int8), ref[0])
    assert len(snaps) == 17 and torch.allclose(snaps[-1], s[:, None] * codes)
    assert len(explain.gptq_steps_figure(snaps).data) == 16


def test_kv_helpers(tiny, tok):
    runs = storage.kv_cache_runs(tiny, tok.encode("def f():"), 4, group=4)
    b = [r["bytes"] for r in runs.values()]
    assert b[1] < b[0] and all(len(r["tokens"]) == 4 for r in runs.values())
    per = storage.kv_bytes_per_token(tiny, [64, 512])
    assert per["int8 per token"][0] < per["no quantization"][0]
    kivi = next(v for k, v in per.items() if "KIVI" in k)
    assert kivi[1] < kivi[0]  # the residual group amortizes


def test_time_linear_and_bytes_moved():
    t = storage.time_linear(64, 128, batches=(1,), repeats=1)
    assert {"fp32", "Int8Linear (dequantize, fp32 matmul)"} <= set(t[1])
    assert all(ms > 0 for ms in t[1].values())
    moved = storage.bytes_moved(64, 128)
    assert set(t[1]) <= set(moved)
    assert moved["Int8Linear (dequantize, fp32 matmul)"] > moved["fp32"]
    # the fused rows read the codes and scales only: about a quarter / an eighth of fp32
    # bytes; they run wherever the packed kernels take the layer
    assert moved[storage.FUSED_INT4] < moved[storage.FUSED_INT8] < moved["fp32"] / 3
    if pack_layer(Int8Linear.from_linear(torch.nn.Linear(64, 128)))[1] is None:
        assert {storage.FUSED_INT8, storage.FUSED_INT4} <= set(t[1])


def test_exercise_references_match_the_package():
    w = torch.randn(4, 64)
    assert torch.allclose(ex.absmax_quantize(w, 4), quantize(w, 4, "tensor").dequantize())
    assert torch.allclose(ex.group_quantize(w, 4, 16),
                          quantize(w, 4, "group", 16).dequantize())
    q = torch.randint(0, 16, (3, 10), dtype=torch.uint8)
    assert torch.equal(ex.pack_int4(q), pack_int4(q))


# -- the learner's functions drive the lab (issue 17 section 1) -------------------------------
def _spy(fn):
    calls = []

    def wrapped(*args):
        calls.append(args)
        return fn(*args)

    return wrapped, calls


def test_explorer_rounds_rtn_points_with_the_given_quantizer(tiny, tok):
    from infer_lab.exercises.quantization import group_quantize

    mine, calls = _spy(group_quantize)
    e = explore.ParetoExplorer(tiny, tok, replace(TINY, schemes=("fp32",)), bits=3,
                               group_size=64, progress=False, quantizer=mine)
    n_lin = len(eligible(tiny))
    assert len(calls) == n_lin and {c[1:] for c in calls} == {(3, 64)}
    p = e.points["RTN int3-g64"]
    assert p.bits_per_weight == pytest.approx(3.25)
    e.bits.value = 4  # a real Int4Linear point: its size and speed, the quantizer's perplexity
    assert len(calls) == 2 * n_lin and e.points["RTN int4-g64"].kind == "rtn"
    assert e.points["RTN int4-g64"].bits_per_weight == pytest.approx(4.25)
    e.group.value = 0  # per channel: the quantizer sees group_size = in_features
    assert all(c[2] == c[0].shape[1] for c in calls[2 * n_lin:])
    # the reference quantizer (fp32 scales) and the package's (fp16 scales) agree closely
    plain = explore.ParetoExplorer(tiny, tok, replace(TINY, schemes=("fp32",)), bits=3,
                                   group_size=64, progress=False)
    assert plain.points["RTN int3-g64"].ppl == pytest.approx(p.ppl, rel=1e-2)


def test_calibrated_errors_run_the_given_gptq_and_awq():
    from infer_lab.exercises import quantization_methods as qm

    x = qm.calib_inputs(256, 64, 0)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    gptq, g_calls = _spy(qm.gptq_quantize)
    awq, a_calls = _spy(qm.awq_scale_search)
    res, _ = explain.calibrated_errors(w, x, x, bits=3, group_size=16, awq_grid=5,
                                       gptq=gptq, awq=awq)
    base, _ = explain.calibrated_errors(w, x, x, bits=3, group_size=16, awq_grid=5)
    assert len(g_calls) == 1 and g_calls[0][0].dtype == torch.float64 and len(a_calls) == 1
    assert res["GPTQ"]["output"] < res["RTN"]["output"]
    # the learner's loop (fp32 scales) lands where the package's (fp16 scales) does
    assert res["GPTQ"]["output"] == pytest.approx(base["GPTQ"]["output"], rel=0.05)
    assert res["AWQ"] == pytest.approx(base["AWQ"])  # the same search, the same quantizer


def test_outlier_experiment_and_kivi_errors_run_the_given_functions(tiny, tok):
    from infer_lab.exercises import quantization_outliers as qo

    mm, calls = _spy(qo.llm_int8_matmul)
    assert explain.outlier_matmul_errors(matmul=mm) == explain.outlier_matmul_errors()
    assert len(calls) == 3
    runs = storage.kv_cache_runs(tiny, tok.encode("def f():"), 12, group=4)
    fp = next(iter(runs.values()))["cache"]
    kivi, k_calls = _spy(qo.kivi_quantize_keys)
    mine = storage.kivi_key_errors(fp, kivi, group=4)
    assert len(k_calls) == 1 and mine == pytest.approx(storage.kivi_key_errors(fp, group=4))
    assert all(0 < e < 1 for e in mine.values())
