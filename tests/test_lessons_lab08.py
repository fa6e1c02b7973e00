"""Lab 08's drivers and figures: the runtime race's rows and chart, roofline predictions,
inductor's generated dequantize-matmul, recompiles, the break-even widget, CUDA graphs'
label, and the decode-step profile picture. Compiles are kept tiny (one small function)."""

import math
from dataclasses import replace

import pytest
import torch
from figure_checks import assert_titled

from infer_lab.config import ModelConfig
from infer_lab.exercises import runtimes as ex
from infer_lab.lessons import lab08_runtimes as lab08
from infer_lab.lessons import lab08_runtimes_compile as comp
from infer_lab.lessons import lab08_runtimes_gemv as gemv
from infer_lab.lessons import lab08_runtimes_profile as prof
from infer_lab.model import Transformer
from infer_lab.runtimes.compiled import break_even_tokens
from infer_lab.runtimes.profile import KINDS
from infer_lab.scale import SCALES

CFG = ModelConfig(vocab_size=97, n_layer=1, n_head=4, n_kv_head=2, d_model=64, d_ff=128,
                  max_seq_len=64)
ROWS = [lab08._row("code-s", "eager fp32", 100.0, 0.1, 4.0),
        lab08._row("code-s", "compiled", 150.0, 6.0, 4.0),
        lab08._row("code-s", "fused int4", 120.0, 0.2, 0.5625),
        lab08._row("code-s", "llama.cpp", None, None, None, "llama.cpp runs GGUF files"),
        lab08._row("smollm2", "llama.cpp", 80.0, 0.2, 0.717)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


def test_scale_groups():
    for s in SCALES.values():
        r = s.runtimes
        assert r.model in ("code-s", "code-m") and r.new_tokens > 0 and r.repeats >= 1
        assert len(r.recompile_lengths) >= 2 and len(set(r.recompile_lengths)) == len(
            r.recompile_lengths)
    assert SCALES["ci"].runtimes.model == "code-s" and SCALES["ci"].runtimes.real_model is None


def test_runtimes_figure_and_table_label_gaps_and_recorded_figures():
    fig = lab08.runtimes_figure(ROWS)
    assert_titled(fig, categorical_x=True)
    names = [t.name for t in fig.data]
    assert "code-s: measured now" in names and any("recorded" in n for n in names)
    measured = fig.data[0]
    assert "llama.cpp runs GGUF files" in measured.text  # a gap says why, its bar is 0
    assert fig.layout.yaxis.type == "log"
    assert len(lab08.runtimes_figure(ROWS, recorded=False).data) == 2
    table = lab08.rows_table(ROWS)
    assert "llama.cpp runs GGUF files" in table and "150.0" in table


def test_roofline_rows_use_the_given_function():
    cfg = ModelConfig(vocab_size=97, n_layer=1, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                      max_seq_len=64)
    rows = lab08.roofline_rows(ROWS, cfg, 10.0, ex.roofline_tokens_per_s)
    assert [r["runtime"] for r in rows] == ["eager fp32", "compiled", "fused int4"]
    from infer_lab.hardware import matmul_params

    want = 10e9 / (matmul_params(cfg) * 4.0)
    assert rows[0]["roofline_tokens_per_s"] == pytest.approx(want)
    assert rows[0]["fraction"] == pytest.approx(100.0 / want)
    mine = lab08.roofline_rows(ROWS, cfg, 10.0, lambda p, b, bw: 1000.0)
    assert all(r["roofline_tokens_per_s"] == 1000.0 for r in mine)
    assert_titled(lab08.prediction_figure(rows, 10.0), categorical_x=True)


def test_plugged_linears_run_the_given_product_only_when_compiled(model):
    calls = []

    def product(x, w, b=None):
        calls.append(tuple(x.shape))
        return ex.gemv_reduction(x, w, b)

    plugged = gemv.with_product(model, product)
    linears = [m for m in plugged.modules() if isinstance(m, gemv.PluggedReductionLinear)]
    assert len(linears) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    orig = dict(model.named_modules())
    assert all(m.weight is orig[n].weight for n, m in plugged.named_modules()
               if isinstance(m, gemv.PluggedReductionLinear))  # shared, not copied
    x = torch.randn(1, 1, CFG.d_model)
    layer = linears[0]
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not calls  # eager: F.linear, as the package's ReductionLinear
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), layer(x), atol=1e-5) and calls == [(1, 1, CFG.d_model)]


def test_compiled_decoder_with_the_learners_product(model):
    prompt = [1, 2, 3, 4]
    dec = gemv.compiled_decoder(model, len(prompt) + 4, ex.gemv_reduction)
    assert not dec.reductions and isinstance(
        next(m for m in dec._model.modules() if isinstance(m, gemv.PluggedReductionLinear)),
        gemv.PluggedReductionLinear)
    from infer_lab.generate import generate

    assert dec.generate([prompt], 4)[0] == generate(model, [prompt], 4, eos_id=None)[0]
    speed = gemv.decode_speedup(dec, model, prompt, 4, 1)
    assert speed["speedup"] > 0 and speed["eager_tokens_per_s"] > 0


def test_break_even_reference_equals_the_package():
    for args in [(43.1, 7.13e-3, 5.84e-3), (5.0, 0.01, 0.01), (5.0, 0.01, 0.02), (0.0, 1.0, 0.5)]:
        assert ex.break_even_tokens(*args) == break_even_tokens(*args)


def test_dequant_matmul_code_shows_where_the_dequantization_went():
    gen = comp.dequant_matmul_code((64, 128), repeats=2)
    mm, red = gen["as a matmul"], gen["as a reduction"]
    assert mm["max_err"] < 1e-4 and red["max_err"] < 1e-4 and gen["eager"]["us"] > 0
    if not mm["kernels"]:
        pytest.skip("inductor generated no C++ here (no compiler?)")
    assert mm["extern_mm"] and not red["extern_mm"]
    assert "fp32 weight buffer" in comp.where_dequant_went(mm)
    assert "inside the reduction loop" in comp.where_dequant_went(red)
    excerpt = "\n".join(comp.kernel_excerpt(k) for k in red["kernels"])
    assert "int8 codes loaded" in excerpt and "accumulate" in excerpt


def test_recompiles_static_vs_dynamic():
    rows = comp.recompile_rows((3, 5), dim=8)
    graphs = {m: sum(r["new_graphs"] for r in rows if r["mode"] == m)
              for m in ("static shapes", "dynamic shapes")}
    assert graphs == {"static shapes": 2, "dynamic shapes": 1}
    assert all(r["new_graphs"] == 0 for r in rows if r["round"] == "again")
    assert_titled(comp.recompile_figure(rows), categorical_x=True)


def test_break_even_explorer_uses_the_given_function():
    calls = []

    def mine(c, e, k):
        calls.append((c, e, k))
        return break_even_tokens(c, e, k)

    w = comp.BreakEvenExplorer(10.0, 5.0, 4.0, mine)
    assert calls and calls[-1][0] == pytest.approx(10.0, rel=0.15)
    assert "10,000" in w.readout.value or "pays off" in w.readout.value
    w.fast.value = 8.0  # slower than eager: never
    assert "never" in w.readout.value
    fig, n = w.build()
    assert math.isinf(n) and len(fig.data) == 2


def test_cuda_graphs_line_without_a_gpu(model):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the section measures")
    assert "not measured: no GPU" in comp.cuda_graphs_line(model, [1, 2, 3], 4)


def test_profile_picture_of_fp32_and_fused_models(model):
    models = prof.quantized_models(model)
    assert list(models) == ["fp32", "fused int8", "fused int4"]
    profiles = prof.step_profiles(models, [1, 2, 3, 4], 1)
    for name, p in profiles.items():
        assert p.label == name and sum(p.by_kind.values()) == pytest.approx(p.total_ms)
    assert "_weight_int8pack_mm" in prof.matmul_line(profiles["fused int8"])
    assert "_weight_int4pack_mm_for_cpu" in prof.matmul_line(profiles["fused int4"])
    fig = prof.profile_figure(profiles)
    assert fig.layout.title.text and "(ms)" in fig.layout.xaxis.title.text
    assert {t.name for t in fig.data} <= {*KINDS, "wall time, unprofiled"}
    table = prof.kind_table(profiles)
    assert "matmul" in table and "fused int4" in table
    mine = prof.step_profiles({"fp32": model}, [1, 2, 3], 1, classify=lambda n: "mine")
    assert mine["fp32"].by_kind["mine"] == pytest.approx(mine["fp32"].total_ms)


def test_measure_runtimes_on_a_tiny_model(tmp_path, monkeypatch):
    """The race's plumbing on a 1-layer model: every contender but ONNX Runtime's export
    (tested in test_runtimes_onnx.py), and the compile patched to eager (tested in
    test_runtimes_compiled.py): rows for each runtime, llama.cpp labelled."""
    from infer_lab.runtimes import compiled

    monkeypatch.setattr(compiled.torch, "compile", lambda fn, **kw: fn)
    import infer_lab

    m, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    sizes = replace(SCALES["ci"].runtimes, new_tokens=3, repeats=1)
    from infer_lab.bench import runtimes as bench

    real = bench.contenders
    monkeypatch.setattr(bench, "contenders", lambda *a: real(*a[:5], [*a[5], "onnxruntime"],
                                                             a[6]))
    assert "compiled int4" in lab08._skip(lab08.ZOO_RUNTIMES)  # one compile, the lab's own
    rows = lab08.measure_runtimes(m, tok, sizes, tmp_path)
    got = {(r["model"], r["runtime"]) for r in rows}
    assert {("code-s", k) for k in ("eager fp32", "eager bf16", "compiled", "fused int8",
                                    "fused int4", "llama.cpp")} <= got
    assert ("smollm2", "llama.cpp") in got
    assert all(r["tokens_per_s"] > 0 for r in rows if r["runtime"] != "llama.cpp")
    assert [r["runtime"] for r in rows if r["model"] == "code-s"] == [
        k for k in lab08.ORDER if ("code-s", k) in got]
