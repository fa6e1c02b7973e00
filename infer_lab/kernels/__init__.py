"""GPU kernels in Triton, each beside the PyTorch reference it must equal.

One file per kernel: the reference (the math, in PyTorch), the ``@triton.jit`` kernel and
its launch wrapper, a dispatcher (CUDA tensors -> the kernel; CPU tensors -> the
reference, or the kernel under Triton's interpreter with ``TRITON_INTERPRET=1``), the
cases that grade it (:mod:`.check`) and a benchmark. :mod:`.runtime` decides where a call
runs and lets every file import without Triton installed.

    vector_add       programs, blocks, masks for the tail
    softmax          fused row softmax: one read, one write, max-subtracted
    online_softmax   rows longer than a block: a running max and a rescaled running sum
    rmsnorm          RMSNorm fused with its weight (the fusion lesson)
    swiglu           silu(a) * b fused
    matmul           tiled matmul: block sizes, the K loop, tl.dot
    flash_attention  FlashAttention forward: K/V tiles, online softmax, causal, GQA
    paged_attention  decode attention read in place through a block table
    quant_gemv       weight-only int8 / int4 dequantize-and-multiply for decode
"""

from .runtime import HAS_TRITON, INSTALL, backend, interpreting, uses_triton

__all__ = ["HAS_TRITON", "INSTALL", "backend", "interpreting", "uses_triton"]
