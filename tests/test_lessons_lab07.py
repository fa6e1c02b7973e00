"""Lab 07's figures, widgets and drivers: program grids, fusion bytes, tiles stepped through,
the online softmax's m and l, paged reads, code-m's scores through the kernels, the
roofline with its unmeasured kernels."""

import math
from dataclasses import replace

import pytest
import torch
from figure_checks import assert_titled

from infer_lab.config import ModelConfig
from infer_lab.hardware import HardwareSpec
from infer_lab.kernels import online_softmax, quant_gemv, rmsnorm, softmax, swiglu
from infer_lab.kernels.flash_attention import tiled_attention
from infer_lab.lessons import lab07_kernels as lab07
from infer_lab.lessons import lab07_kernels_runs as runs
from infer_lab.lessons import lab07_kernels_tiles as tiles
from infer_lab.model import Transformer
from infer_lab.scale import SCALES

CPU_ONLY = not torch.cuda.is_available()
CFG = ModelConfig(vocab_size=97, n_layer=1, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                  max_seq_len=64)
TINY = replace(SCALES["ci"].kernels, bench_rows=(8, 64), bench_matmul=(16, 16, 16),
               bench_attention=(1, 2, 1, 16, 16), bench_paged=(2, 2, 1, 32, 16),
               bench_gemv=(1, 64, 32), repeats=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


def test_program_grid_masks_the_tail():
    grid = lab07.program_grid(10, 4)
    assert grid == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, None, None]]
    assert lab07.program_grid(8, 4)[-1] == [4, 5, 6, 7]  # a multiple of the block: no mask
    fig = lab07.program_grid_figure(10, 4)
    assert_titled(fig)
    assert fig.data[0].text[2][3] == "masked" and "2 lanes masked" in fig.layout.title.text


def test_fusion_bytes_come_from_the_kernel_files():
    t = lab07.fusion_traffic(16, 128)
    assert t["RMSNorm"]["fused"] == rmsnorm.fused_traffic(16, 128)
    eager = sum(v for k, v in t["RMSNorm"].items() if k != "fused")
    assert eager == sum(b for _, b in rmsnorm.unfused_traffic(16, 128))
    assert eager > 3 * t["RMSNorm"]["fused"]  # fp32: the chain moves x several times
    assert t["SwiGLU"]["fused"] == swiglu.fused_traffic(16 * 128)
    assert_titled(lab07.fusion_figure(16, 128), categorical_x=True)


def test_fusion_times_never_time_the_interpreter():
    rows = lab07.fusion_times(TINY, "cpu")
    assert {r["impl"] for r in rows} == {"reference", "triton"}
    for r in rows:
        if r["impl"] == "reference":
            assert r["ms"] > 0
        elif CPU_ONLY:
            assert r["ms"] is None and "unmeasured" in r["note"]
    assert "unmeasured: the interpreter" in lab07.format_rows(rows) or not CPU_ONLY


def test_gemv_bytes_are_the_layers_buffers():
    b = lab07.gemv_bytes(256, 704)
    assert b["fp32"] == 4 * 256 * 704 and b["fp16"] == 2 * 256 * 704
    assert b["int8 per channel"] == 256 * 704 + 2 * 704  # fp16 scale per row
    assert b["int4 groups of 64"] == 256 * 704 // 2 + 2 * 704 * (256 // 64)
    assert_titled(lab07.gemv_bytes_figure(bandwidth_gbs=100.0), categorical_x=True)


def test_matmul_tiles_and_traffic():
    r = tiles.tile_reads(48, 40, 36, 16, 16, 16, pid_m=2, pid_n=1, k=2)
    assert r == {"rows": (32, 48), "cols": (16, 32), "k": (32, 48)}
    t = tiles.matmul_traffic(64, 64, 64, 16, 16, elem=1)
    assert t["untiled"] == 2 * 64 ** 3 + 64 * 64
    assert t["tiled"] == 64 * 64 * 4 * 2 + 64 * 64  # A and B each re-read by 4 programs
    ex = tiles.MatmulTilesExplorer(48, 40, 36)
    ex.pid_m.value, ex.k.value = 2, 2
    a = ex.figure.data[0].z  # A, padded to whole tiles: rows 32..47, K columns 32..47 now
    now = sum(v == 2 for row in a for v in row)
    masked = sum(v == 3 for row in a for v in row)
    earlier = sum(v == 1 for row in a for v in row)
    assert (now, masked, earlier) == (16 * 8, 16 * 8, 16 * 32)  # K = 40: 8 columns past it
    assert "3 x 3 programs" in ex.readout.value
    assert_titled(tiles.matmul_tiles_figure(48, 40, 36, 16, 16, 16, 0, 0, 0))


def test_online_softmax_explorer_steps_give_the_running_max_and_sum():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(16, generator=g), torch.randn(50, 16, generator=g), torch.randn(
        50, 16, generator=g)
    ex = tiles.OnlineSoftmaxExplorer(q, k, v, block=16)
    s = (k @ q) / 4.0  # sqrt(16)
    assert len(ex.history) == 4  # 50 keys: 3 tiles of 16 and a tail of 2
    for t in range(1, 5):
        ex.tile.value = t
        st = ex.state(t)
        seen = s[: min(16 * t, 50)]
        assert st["m"] == pytest.approx(float(seen.max()), abs=1e-5)
        assert st["l"] == pytest.approx(float(torch.exp(seen - seen.max()).sum()), rel=1e-5)
        assert f"m = {st['m']:.4f}" in ex.readout.value
    assert ex.state(4)["error"] < 1e-5 and "same answer" in ex.readout.value
    want = tiled_attention(q[None, None, None], k[None, None], v[None, None],
                           torch.ones(1, 1, 1, 50, dtype=torch.bool))[0, 0, 0]
    torch.testing.assert_close(ex.history[-1]["o"], want)
    assert ex.state(1)["error"] > 1e-3  # one tile is not the whole softmax


def test_paged_pictures_and_reads():
    lens = (5, 11, 18)
    q, kp, vp, tables, ctx = tiles.paged_inputs(lens, 4)
    snap = tiles.paged_snapshot(tables, ctx, kp.shape[0], 4)
    assert [len(snap.tables[b]) for b in range(3)] == [2, 3, 5]
    assert sum(snap.ref_counts) == 10 and max(snap.ref_counts) == 1  # no block shared
    fig = tiles.paged_figure(tables, ctx, kp.shape[0], 4)  # lab 06's picture, two panels
    assert fig.layout.title.text and len([d for d in fig.data if d.type == "heatmap"]) == 2
    assert fig.data[0].text[2] == [str(b) for b in tables[2].tolist()]
    errors = tiles.paged_check(q, kp, vp, tables, ctx)
    assert all(e < 1e-5 for e in errors.values()), errors


def test_recorded_scores_reproduce_the_models_attention(model):
    tokens = list(range(3, 23))
    q, k, v = runs.attention_inputs(model, tokens, layer=0)
    assert q.shape == (1, 4, 20, 8) and k.shape == (1, 2, 20, 8)
    s = runs.scores(q, k)
    assert s.shape == (4, 20, 20) and torch.isinf(s[0, 0, 1]) and not torch.isinf(s[0, 1, 1])
    r = runs.softmax_on_scores(q, k, v, softmax._softmax_kernel)
    assert r["rows"] == 80 and r["max |p - torch.softmax|"] < 1e-5
    assert r["max |p V - model's attention|"] < 1e-5
    r, trace = runs.online_on_last_query(q, k, 8, online_softmax._online_softmax_kernel)
    assert r["tiles"] == len(trace) == 3 and r["max |p - torch.softmax|"] < 1e-5
    row = s[0, -1]
    assert trace[-1][0] == pytest.approx(float(row.max()))
    assert trace[-1][1] == pytest.approx(float(torch.exp(row - row.max()).sum()), rel=1e-5)


def test_int4_layer_through_the_kernel(model):
    r = runs.int4_layer_check(model, list(range(3, 13)), quant_gemv._int4_gemv_kernel,
                                 group=16)
    assert r["max |kernel - Int4Linear forward|"] < 1e-4
    assert 0 < r["max |int4 - fp layer| (quantization error)"] < 1.0
    assert r["weight bytes int4"] < r["weight bytes fp"] / 4


def test_time_lines_say_unmeasured_on_a_cpu():
    line = runs.time_line(lambda: 1 / 0, lambda: torch.ones(4).sum(), ("kernel", "ref"),
                             "cpu", 2)
    assert line.startswith("ref: ") and "kernel: unmeasured" in line  # the kernel never ran
    assert "unmeasured" in runs.int4_time_line((1, 64, 32), quant_gemv._int4_gemv_kernel,
                                                  "cpu", 1)


def test_roofline_marks_the_interpreted_kernels_unmeasured():
    rows = runs.kernel_roofline(TINY, "cpu")
    kernels = {r["kernel"] for r in rows}
    assert {"vector_add", "softmax", "online_softmax", "rmsnorm", "swiglu", "matmul",
            "flash_attention", "paged_attention", "int4_gemv"} <= kernels
    for r in rows:
        assert r["intensity"] > 0 and r["bytes"] > 0
        if r["impl"] != "triton" or CPU_ONLY:
            assert (r["FLOP/s"] is None) == (r["impl"] == "triton")
    mm = next(r for r in rows if r["kernel"] == "matmul")
    assert mm["intensity"] == pytest.approx(2 * 16 ** 3 / (3 * 16 * 16 * 4))
    hw = HardwareSpec("test cpu", "cpu", 20.0, {"fp32": 0.5}, source="measured")
    fig = runs.roofline_figure(hw, rows)
    assert_titled(fig)
    labels = [a.text for a in fig.layout.annotations]
    if CPU_ONLY:
        assert sum("unmeasured" in t for t in labels) == sum(r["impl"] == "triton" for r in rows)


def test_backend_line_source_and_lines():
    line = lab07.backend_line()
    assert ("interpreter" in line) if CPU_ONLY else ("compiled" in line)
    assert "def _softmax_kernel" in lab07.source(softmax._softmax_kernel)
    assert math.isclose(float(lab07.lines({"a": 0.123456}).split(": ")[1]), 0.123)


def test_prediction_answers():
    # pow, xf * r and weight * each read and write the tensor: ~3.5x the fused bytes
    assert 3.3 < lab07.traffic_ratio(64, 1024) < 3.6
    assert math.isclose(lab07.traffic_ratio(8, 64, "SwiGLU"), 5 / 3)
    b = lab07.gemv_bytes(256, 704)
    assert b["fp32"] == 256 * 704 * 4 and b["int4 groups of 64"] == 704 * (128 + 4 * 2)
    assert math.isclose(lab07.gemv_speedup_bound(256, 704), b["fp32"] / b["int4 groups of 64"])
