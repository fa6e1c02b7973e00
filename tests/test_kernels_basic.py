"""The first five Triton kernels (issue 15), each beside its PyTorch reference.

Each kernel matches its reference on its file's cases (under Triton's interpreter here,
compiled on a GPU); the dispatcher uses the reference where Triton cannot run; bad inputs get
a clear ValueError; and each file's validation rejects a planted bug, a plain ``@jit``
kernel below launched through the same wrapper:

    kernel      planted bug                 caught by
    vector_add  no tail mask                the output's guard band: "wrote past the end"
                                            on every size that is not a whole number of blocks
    softmax     no max subtraction          logits near 100 overflow exp: "non-finite output"
                                            (only the "large" cases; randn logits pass)
    rmsnorm     mean over BLOCK, not n      rows off by sqrt(BLOCK / n) wherever n is not a
                                            power of two (the 3x128 case still passes)
    swiglu      sigmoid(a) * b              values off on every non-empty case
    matmul      K loop without a K mask     the last K step reads the NaN placed after each
                                            input: "non-finite output" wherever K % BLOCK_K != 0
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from infer_lab.kernels import matmul, rmsnorm, runtime, softmax, swiglu, vector_add
from infer_lab.kernels.runtime import jit, tl
from infer_lab.model import RMSNorm

# Under the interpreter numpy reports overflow in a saturating exp (swiglu's large gates,
# the planted softmax) and NaN arithmetic (the poisoned tails the planted bugs read).
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

# name -> (module, the dispatcher's name, benchmark sizes small enough for a test)
KERNELS = {
    "vector_add": (vector_add, "vector_add", (1000,)),
    "softmax": (softmax, "softmax", ((4, 50),)),
    "rmsnorm": (rmsnorm, "rmsnorm", ((4, 50),)),
    "swiglu": (swiglu, "swiglu", ((4, 50),)),
    "matmul": (matmul, "matmul", ((8, 8, 8),)),
}


def _parts(name: str):
    mod, fn, _ = KERNELS[name]
    return mod, getattr(mod, fn), getattr(mod, f"{fn}_triton"), getattr(mod, f"{fn}_reference")


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_matches_reference(name):
    pytest.importorskip("triton")
    mod, *_ = _parts(name)
    report = mod.validate()
    assert report.passed, str(report)
    assert len(report.cases) >= 20
    # another seed draws other random shapes: the answer cannot be fitted to one
    assert mod.validate(seed=7).passed


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("without", ["interpreter", "triton"])
def test_dispatcher_uses_reference_where_triton_cannot_run(name, without, monkeypatch):
    mod, dispatch, wrapper, reference = _parts(name)
    if without == "interpreter":
        monkeypatch.setattr(runtime, "interpreting", lambda: False)
    else:
        monkeypatch.setattr(runtime, "HAS_TRITON", False)

    def no_triton(*args, **kwargs):
        raise AssertionError("the dispatcher launched the Triton kernel")

    monkeypatch.setattr(mod, wrapper.__name__, no_triton)
    case = next(c for c in mod.cases() if all(a.numel() for a in c.args))
    assert runtime.backend(*case.args) == "reference"
    assert torch.equal(dispatch(*case.args, **case.kwargs), reference(*case.args, **case.kwargs))


@pytest.mark.parametrize("name", KERNELS)
def test_dispatcher_uses_the_kernel_under_the_interpreter(name, monkeypatch):
    pytest.importorskip("triton")
    mod, dispatch, wrapper, _ = _parts(name)
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    calls = []
    monkeypatch.setattr(mod, wrapper.__name__, lambda *a, **k: calls.append(a) or "kernel")
    case = mod.cases()[0]
    assert dispatch(*case.args, **case.kwargs) == "kernel" and len(calls) == 1


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD_INPUTS = [
    (vector_add.vector_add_triton, (_t(5), _t(6)), {}, "equal shapes"),
    (vector_add.vector_add_triton, (_t(5), _t(5, dtype=torch.float16)), {}, "one dtype"),
    (vector_add.vector_add_triton, (torch.ones(5, dtype=torch.int32),) * 2, {}, "supports"),
    (vector_add.vector_add_triton, (_t(4, 6).T, _t(6, 4)), {}, "contiguous"),
    (vector_add.vector_add_triton, (_t(5), _t(5)), {"block": 100}, "power of two"),
    (vector_add.vector_add_triton, (_t(5, dtype=torch.bfloat16),) * 2, {}, "bfloat16"),
    (softmax.softmax_triton, (torch.tensor(1.0),), {}, "at least one dimension"),
    (softmax.softmax_triton, (_t(1, softmax.MAX_COLS + 1),), {}, "do not fit one block"),
    (softmax.softmax_triton, (_t(6, 4).T,), {}, "stride 1"),
    (softmax.softmax_triton, (torch.ones(2, 3, dtype=torch.int64),), {}, "supports"),
    (softmax.softmax_triton, (_t(2, 3, dtype=torch.bfloat16),), {}, "bfloat16"),
    (rmsnorm.rmsnorm_triton, (_t(3, 8), _t(7)), {}, "weight of shape"),
    (rmsnorm.rmsnorm_triton, (_t(3, 8, dtype=torch.float16), _t(8)), {}, "weight is"),
    (rmsnorm.rmsnorm_triton, (_t(8, 3).T, _t(8)), {}, "stride 1"),
    (rmsnorm.rmsnorm_triton, (_t(2, rmsnorm.MAX_COLS + 1), _t(rmsnorm.MAX_COLS + 1)), {},
     "do not fit one block"),
    (swiglu.swiglu_triton, (_t(3, 8), _t(3, 9)), {}, "equal shapes"),
    (swiglu.swiglu_triton, (_t(8, 6)[:, :3], _t(8, 3)), {}, "contiguous"),
    (swiglu.swiglu_triton, (_t(3), _t(3, dtype=torch.float16)), {}, "one dtype"),
    (matmul.matmul_triton, (_t(3, 4), _t(5, 6)), {}, "inner dimensions"),
    (matmul.matmul_triton, (_t(2, 3, 4), _t(4, 5)), {}, "two matrices"),
    (matmul.matmul_triton, (_t(3, 4), _t(4, 5, dtype=torch.float16)), {}, "one dtype"),
    (matmul.matmul_triton, (_t(3, 4, dtype=torch.bfloat16), _t(4, 5, dtype=torch.bfloat16)),
     {}, "bfloat16"),
]


@pytest.mark.parametrize("fn, args, kwargs, match", BAD_INPUTS,
                         ids=[f"{f.__name__}-{m}" for f, _, _, m in BAD_INPUTS])
def test_bad_input_gets_a_clear_error(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("name", KERNELS)
def test_cpu_tensors_without_the_interpreter_are_refused(name, monkeypatch):
    mod, _, wrapper, _ = _parts(name)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)  # check_launchable reads it
    case = next(c for c in mod.cases(device="cpu") if all(a.numel() for a in c.args))
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        wrapper(*case.args, **case.kwargs)


# -- planted bugs: each is one plausible mistake, in a kernel with the real one's signature --
@jit
def _add_without_tail_mask(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets) + tl.load(y_ptr + offsets))


@jit
def _softmax_without_max(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf"))
    num = tl.exp(x.to(tl.float32))
    y = num / tl.sum(num, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _rmsnorm_mean_over_block(x_ptr, w_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, eps,
                             BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    xn = x * tl.rsqrt(tl.sum(x * x, axis=0) / BLOCK + eps)
    w = tl.load(w_ptr + cols, mask=mask)
    tl.store(y_ptr + row * y_row_stride + cols, xn.to(x_ptr.dtype.element_ty) * w, mask=mask)


@jit
def _swiglu_sigmoid_not_silu(a_ptr, b_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
    b = tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(y_ptr + offsets, (tl.sigmoid(a) * b).to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _matmul_without_k_mask(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                           stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=rm[:, None] < M, other=0.0)  # the K tail is not masked
        b = tl.load(b_ptrs, mask=rn[None, :] < N, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _not_whole_blocks(case) -> bool:
    return case.args[0].numel() % vector_add.BLOCK != 0


def _not_power_of_two_rows(case) -> bool:
    n = case.args[0].shape[-1]
    return n & (n - 1) != 0 and case.args[0].numel() > 0


def _k_tail(case) -> bool:
    (m, k), n = case.args[0].shape, case.args[1].shape[1]
    return k % matmul.INTERPRETER_BLOCKS["BLOCK_K"] != 0 and m * n > 0


# kernel -> (wrong kernel, which cases must fail, text every failure carries)
PLANTED = {
    "vector_add": (_add_without_tail_mask, _not_whole_blocks, "wrote past the end"),
    "softmax": (_softmax_without_max, lambda c: c.name.startswith("large"), "non-finite"),
    "rmsnorm": (_rmsnorm_mean_over_block, _not_power_of_two_rows, "values off"),
    "swiglu": (_swiglu_sigmoid_not_silu, lambda c: c.args[0].numel() > 0, "values off"),
    "matmul": (_matmul_without_k_mask, _k_tail, "non-finite"),
}


@pytest.mark.parametrize("name", PLANTED)
def test_validation_catches_the_planted_bug(name):
    pytest.importorskip("triton")
    mod, _, wrapper, _ = _parts(name)
    wrong, should_fail, text = PLANTED[name]
    report = mod.validate(fn=partial(wrapper, kernel=wrong))
    assert report.passed is False
    failed = {c.name for c in report.failures}
    expected = {c.name for c in mod.cases() if should_fail(c)}
    assert failed == expected, str(report)  # the edge cases catch it, and only those
    assert all(text in c.error for c in report.failures), str(report)


# -- the references are the model's math, and the fusion lesson's numbers -----------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rmsnorm_reference_is_the_models(dtype):
    norm = RMSNorm(77, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(77))
    x = torch.randn(3, 5, 77).to(dtype)
    with torch.no_grad():
        assert torch.equal(rmsnorm.rmsnorm_reference(x, norm.weight, 1e-6), norm(x))


def test_swiglu_reference_is_the_models(tiny):
    mlp = tiny.layers[0].mlp
    assert mlp.gated
    x = torch.randn(2, 3, tiny.config.d_model)
    with torch.no_grad():
        assert torch.equal(mlp.w2(swiglu.swiglu_reference(mlp.w1(x), mlp.w3(x))), mlp(x))


def test_fusion_moves_fewer_bytes():
    unfused = sum(b for _, b in rmsnorm.unfused_traffic(4096, 4096))
    assert unfused / rmsnorm.fused_traffic(4096, 4096) == pytest.approx(3.5, abs=0.01)
    assert rmsnorm.unfused_traffic(2, 8, torch.float16)[0][0] == "x.float()"
    half = sum(b for _, b in rmsnorm.unfused_traffic(4096, 4096, torch.float16))
    assert half / rmsnorm.fused_traffic(4096, 4096, torch.float16) == pytest.approx(9, abs=0.01)
    assert sum(b for _, b in swiglu.unfused_traffic(1000)) == 5 * 4000
    assert swiglu.fused_traffic(1000, torch.float16) == 3 * 2000


@pytest.mark.parametrize("name", KERNELS)
def test_benchmark_times_the_reference_and_marks_the_interpreter(name):
    mod, _, sizes = KERNELS[name]
    rows = mod.benchmark(sizes=sizes, repeats=1, device="cpu")
    ref = next(r for r in rows if r["impl"] == "reference")
    tri = next(r for r in rows if r["impl"] == "triton")
    assert ref["ms"] > 0 and (ref.get("GB/s") or ref.get("TFLOP/s")) > 0
    assert tri["ms"] is None and tri["note"] == "unmeasured (interpreter is not a speed)"
