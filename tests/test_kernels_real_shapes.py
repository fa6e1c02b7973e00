"""The kernels compiled on a GPU, at the shapes of real models (``make gpu-check`` runs this).

Under Triton's interpreter these shapes would take minutes (each program runs in numpy),
so on a machine without CUDA every test here is skipped; the same kernels are checked at
small shapes under the interpreter by the other kernel tests. Shapes: SmolLM2-135M
(d_model 576, 9 query / 3 KV heads of 64, d_ff 1536, vocab 49,152) and a Llama-2-7B
layer (4096 wide, heads of 128, d_ff 11,008), fp16 and bf16, with contexts of thousands
of tokens.
"""

import copy

import pytest
import torch

from infer_lab.kernels.check import Case, compare, tolerance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="real shapes run compiled, on a CUDA GPU")
DTYPES = [torch.float16, torch.bfloat16]


def _rand(*shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to("cuda", dtype)


def _assert(name, fn, ref, args, dtype):
    atol, rtol = tolerance(dtype)
    report = compare(name, fn, ref, [Case(name, args, atol=atol, rtol=rtol)])
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_and_row_kernels(dtype):
    from infer_lab.kernels import rmsnorm, softmax, swiglu, vector_add

    x = _rand(1 << 24, dtype=dtype)
    _assert("vector_add", vector_add.vector_add_triton, vector_add.vector_add_reference,
            (x, _rand(1 << 24, dtype=dtype, seed=1)), dtype)
    _assert("softmax", softmax.softmax_triton, softmax.softmax_reference,
            (_rand(512, 49152, dtype=dtype, scale=4.0),), dtype)  # a batch of SmolLM2 logits
    for d in (576, 4096):
        _assert("rmsnorm", rmsnorm.rmsnorm_triton, rmsnorm.rmsnorm_reference,
                (_rand(2048, d, dtype=dtype), _rand(d, dtype=dtype, seed=2)), dtype)
    for f in (1536, 11008):
        _assert("swiglu", swiglu.swiglu_triton, swiglu.swiglu_reference,
                (_rand(2048, f, dtype=dtype), _rand(2048, f, dtype=dtype, seed=3)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_at_layer_shapes(dtype):
    from infer_lab.kernels import matmul

    for M, K, N in [(2048, 576, 1536), (512, 4096, 4096), (1000, 4096, 11008)]:
        a, b = _rand(M, K, dtype=dtype, scale=K ** -0.5), _rand(K, N, dtype=dtype, seed=1)
        # sums of K products: the tolerance grows with K's rounding in fp16/bf16
        atol, rtol = (x * 4 for x in tolerance(dtype))
        report = compare("matmul", matmul.matmul_triton, matmul.matmul_reference,
                         [Case("matmul", (a, b), atol=atol, rtol=rtol)])
        assert report.passed, str(report)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_kernels_at_long_contexts(dtype):
    from infer_lab.kernels import flash_attention as fa
    from infer_lab.kernels import paged_attention as pa

    for B, H, H_kv, T, D in [(2, 9, 3, 2048, 64), (1, 32, 8, 4096, 128)]:
        q = _rand(B, H, T, D, dtype=dtype)
        k, v = _rand(B, H_kv, T, D, dtype=dtype, seed=1), _rand(B, H_kv, T, D, dtype=dtype, seed=2)
        _assert("flash_attention", fa.flash_attention_triton, fa.flash_attention_reference,
                (q, k, v), dtype)
    bs, lens = 16, [4096, 1, 2500, 17]
    n = -(-max(lens) // bs)
    pools = [_rand(len(lens) * n, 8, bs, 128, dtype=dtype, seed=s) for s in (4, 5)]
    tables = torch.randperm(len(lens) * n, device="cuda").view(len(lens), n).int()
    args = (_rand(len(lens), 32, 128, dtype=dtype), *pools, tables,
            torch.tensor(lens, device="cuda"))
    _assert("paged_attention", pa.paged_attention_triton, pa.paged_attention_reference,
            args, dtype)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_gemv_at_decode_shapes(bits):
    from infer_lab.kernels import quant_gemv

    launch, ref = {8: (quant_gemv.int8_gemv_triton, quant_gemv.int8_gemv_reference),
                   4: (quant_gemv.int4_gemv_triton, quant_gemv.int4_gemv_reference)}[bits]
    for M, K, N in [(1, 576, 1536), (1, 4096, 4096), (1, 11008, 4096), (8, 4096, 11008)]:
        case = quant_gemv._layer(bits, 0, "real", M, K, N, torch.float16,
                                 group=64 if bits == 4 else None).to("cuda")
        atol, rtol = (x * 4 for x in tolerance(torch.float16))  # sums over K of thousands
        report = compare(f"int{bits}_gemv", launch, ref,
                         [Case(case.name, case.args, atol=atol, rtol=rtol)])
        assert report.passed, str(report)


def test_smollm2_greedy_tokens_with_kernels_equal_without():
    """The real model in fp32 on the GPU: every kernel plugged in (norms, SwiGLU, flash
    attention), 32 greedy tokens equal to PyTorch's."""
    from infer_lab.generate import generate
    from infer_lab.kernels.plug import use_kernels
    from infer_lab.lessons.models import real_model_installed

    if not real_model_installed():
        pytest.skip("SmolLM2 is not installed (requirements-models.txt)")
    import infer_lab

    model, tok = infer_lab.load("smollm2-135m", device="cuda")
    plugged = copy.deepcopy(model)
    assert use_kernels(plugged)["KernelAttention"] == model.config.n_layer
    prompt = [tok.encode("def fibonacci(n):")]
    assert generate(plugged, prompt, 32, eos_id=None) == generate(model, prompt, 32, eos_id=None)
