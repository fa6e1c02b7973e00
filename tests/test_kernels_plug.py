"""use_kernels swaps norms, the SwiGLU activation and quantized linears for kernel-backed
modules; greedy tokens equal those without kernels (under Triton's interpreter on CPU,
compiled on CUDA)."""

import copy

import pytest
import torch

from infer_lab.generate import generate
from infer_lab.kernels import runtime
from infer_lab.kernels.plug import KernelQuantLinear, KernelRMSNorm, KernelSwiGLU, use_kernels
from infer_lab.quant import quantize_model

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or runtime.interpreting()),
                                reason="needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("scheme", [None, "int8", "int4-g64"])
def test_greedy_tokens_with_kernels_equal_without(tiny, scheme):
    pytest.importorskip("triton")
    model = quantize_model(copy.deepcopy(tiny), scheme) if scheme else tiny
    plugged = use_kernels(copy.deepcopy(model))
    assert plugged["KernelRMSNorm"] == 2 * tiny.config.n_layer + 1
    assert plugged["KernelSwiGLU"] == tiny.config.n_layer
    if scheme:
        assert plugged["KernelQuantLinear"] > 0
    kernel_model = copy.deepcopy(model)
    use_kernels(kernel_model)
    assert isinstance(kernel_model.norm, KernelRMSNorm)
    assert isinstance(kernel_model.layers[0].mlp, KernelSwiGLU)
    if scheme:
        assert isinstance(kernel_model.layers[0].attn.wqkv, KernelQuantLinear)
    prompt = [[3, 1, 4, 1, 5]]
    want = generate(model, prompt, 6, eos_id=None)
    assert generate(kernel_model, prompt, 6, eos_id=None) == want
    x = torch.randint(0, tiny.config.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(kernel_model(x), model(x), atol=1e-4, rtol=1e-4)
