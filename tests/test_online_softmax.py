"""The online softmax kernel (infer_lab/kernels/online_softmax.py) equals torch.softmax on
rows of many tiles, its PyTorch loop keeps the right running max and sum, and a store that
forgets its mask is caught by the guard band instead of landing past the row."""

import pytest
import torch

from infer_lab.exercises import kernels_mistakes as wrong
from infer_lab.kernels import online_softmax as osm
from infer_lab.kernels import runtime
from infer_lab.kernels.vector_add import poisoned

needs_kernels = pytest.mark.skipif(
    not runtime.HAS_TRITON or (not torch.cuda.is_available() and not runtime.interpreting()),
    reason="needs Triton (compiled on a GPU, or its interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@needs_kernels
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_the_reference_on_every_case(seed):
    report = osm.validate(seed=seed)
    assert report.passed, str(report)
    assert len(report.cases) >= 25


def test_running_stats_end_at_the_row_max_and_sum():
    x = torch.randn(3, 100) * 4
    stats = osm.running_stats(x, 32)
    assert len(stats) == 4  # 100 columns in tiles of 32: 3 full and a tail of 4
    m, l = stats[-1]
    assert torch.equal(m, x.amax(-1))
    torch.testing.assert_close(l, torch.exp(x - m[:, None]).sum(-1))
    # after the first tile only that tile's columns count
    m0, _ = stats[0]
    assert torch.equal(m0, x[:, :32].amax(-1))


@needs_kernels
def test_rows_longer_than_the_fused_kernel_allows():
    x = torch.randn(2, 70_000, device=DEVICE) * 2
    torch.testing.assert_close(osm.online_softmax(x, block=8192), torch.softmax(x, -1))


@needs_kernels
def test_guard_catches_an_unmasked_store():
    assert osm.stores_outside_rows(osm._online_softmax_kernel, device=DEVICE) == 0
    assert osm.stores_outside_rows(wrong.online_unmasked_write, device=DEVICE) > 0
    if DEVICE == "cpu":  # the wrapper's own guard band, under the interpreter
        with pytest.raises(RuntimeError, match="past the end of a row"):
            osm.online_softmax_triton(poisoned(torch.randn(2, 37), 16), block=16,
                                      kernel=wrong.online_unmasked_write)


@needs_kernels
def test_wrapper_refuses_bad_inputs():
    with pytest.raises(ValueError, match="power of two"):
        osm.online_softmax_triton(torch.randn(2, 8, device=DEVICE), block=24)
    with pytest.raises(ValueError, match="stride 1"):
        osm.online_softmax_triton(torch.randn(8, 4, device=DEVICE).T)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="bfloat16"):
            osm.online_softmax_triton(torch.randn(2, 8, dtype=torch.bfloat16))


def test_dispatcher_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(runtime, "_INTERPRET", False)
    x = torch.randn(3, 50)
    if not torch.cuda.is_available():
        assert runtime.backend(x) == "reference"
    torch.testing.assert_close(osm.online_softmax(x), torch.softmax(x, -1))


def test_benchmark_labels_the_kernel_unmeasured_on_cpu():
    rows = osm.benchmark(sizes=((8, 256),), repeats=1, device="cpu")
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["reference"]["ms"] > 0
    assert by_impl["triton"]["ms"] is None and "unmeasured" in by_impl["triton"]["note"]
