"""Compiled runtimes and fused CPU paths: the same model, run by something faster than eager.

    static_cache   StaticKVCache: K/V at fixed shapes (slot = position), what a compiled
                   decode step needs so that it never recompiles
    compiled       torch.compile of the decode step (inductor's C++ backend on a CPU, CUDA
                   graphs on a GPU), its cold start, recompile count and break-even
    onnx_export    the model as an ONNX graph with past keys/values in and out; OrtDecoder
                   decodes it in ONNX Runtime, which owns the KV loop

Each implementation is tested against eager decoding: greedy tokens equal.
"""
