"""Paged decode attention on a CPU that reads K/V in place: a small compiled C++ kernel.

In PyTorch, :func:`~infer_lab.serving.paged_attention.paged_decode_attention` must copy a
step's blocks into one tensor before its batched matmuls, and those matmuls are thousands
of tiny (rep x D) @ (D x block) products: on a 2-core CPU one layer of it cost about 1.6x
the fused SDPA kernel that a contiguous (padded) cache runs on the same batch. The kernel in
``csrc/paged_attention.cpp`` is the loop vLLM's CUDA kernel runs, on CPU threads: one task
per (row, KV head) walks the row's block table, scores each block's keys where they lie,
and keeps an online softmax (running max, sum, output) across blocks; ATen's vectorised
exp and SIMD dot products do the arithmetic. Nothing is copied or padded.

It is built on first use with the C++ compiler PyTorch finds (``torch.utils.cpp_extension``;
about a minute, then cached in ``TORCH_EXTENSIONS_DIR``, default ~/.cache/torch_extensions).
Where it cannot be built, :func:`extension` returns None with the reason, and the pool
reads block by block in PyTorch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "paged_attention.cpp"


@functools.cache
def extension() -> tuple[object | None, str]:
    """(the compiled module, "") or (None, why it could not be built). Built once per
    process (and cached on disk across processes)."""
    try:
        from torch.utils.cpp_extension import load

        name, flags = build_flags()
        mod = load(name, [str(SOURCE)], verbose=False, extra_cflags=["-O3", *flags])
        return mod, ""
    except Exception as e:  # noqa: BLE001 - no compiler, no headers, a failed build
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"


def build_flags() -> tuple[str, list[str]]:
    """The extension's name and compiler flags for this CPU's vector unit.

    Not ``-march=native``: the build is cached by name in a home directory, which a
    JupyterHub may share between machines of different CPUs, so the name says what the
    binary needs. AVX2 (and AVX-512 machines, which run AVX2) gets ATen's AVX2 vectors
    (``CPU_CAPABILITY_AVX2`` selects them in ``ATen/cpu/vec``); anything else the
    portable build. Measured here: 0.8 ms with AVX2 against 1.8 ms portable.
    """
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "infer_lab_paged_cpu_avx2", ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2",
                                            "-DCPU_CAPABILITY=AVX2", "-fopenmp-simd"]
    return "infer_lab_paged_cpu_portable", ["-fopenmp-simd"]


def built() -> bool:
    """True when this machine already holds the compiled kernel, so that using it costs
    no build (labs ask this: a minute of g++ and its memory is not theirs to spend)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        name, _ = build_flags()
        return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))
    except Exception:  # noqa: BLE001 - a private helper of torch: unknown means "no"
        return False


def available() -> bool:
    return extension()[0] is not None


def paged_decode_cpu(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """Decode attention through block tables, K/V read in place (vLLM's PagedAttention
    loop with flash-decoding's online softmax, on CPU threads).

    q (B, H, D) float32; pools (num_blocks, H_kv, block_size, D) float32; block_tables
    (B, n_blocks) and context_lens (B,) integers (row b attends to its first
    context_lens[b] positions). Returns (B, H, D).
    """
    mod, why = extension()
    if mod is None:
        raise RuntimeError(f"the C++ paged-attention kernel could not be built ({why})")
    if q.device.type != "cpu" or not (q.dtype == k_pool.dtype == v_pool.dtype == torch.float32):
        raise ValueError(f"the CPU kernel takes float32 CPU tensors; got {q.dtype} on "
                         f"{q.device}, pools {k_pool.dtype}")
    if q.dim() != 3 or k_pool.dim() != 4 or k_pool.shape != v_pool.shape or (
            q.shape[2] != k_pool.shape[3]) or q.shape[1] % k_pool.shape[1]:
        raise ValueError(f"want q (B, H, D) and pools (num_blocks, H_kv, bs, D) with H a "
                         f"multiple of H_kv; got {tuple(q.shape)}, {tuple(k_pool.shape)}")
    if block_tables.shape[0] != q.shape[0] or context_lens.shape != (q.shape[0],):
        raise ValueError("block_tables (B, n_blocks) and context_lens (B,) must match q's B")
    bs, n = k_pool.shape[2], block_tables.shape[1]
    if q.shape[0]:  # the kernel trusts these: a wrong one would read outside the pool
        if int(context_lens.min()) < 1 or int(context_lens.max()) > n * bs:
            raise ValueError(f"context_lens must lie in 1 .. n_blocks * block_size = {n * bs}")
        used = torch.arange(n) * bs < context_lens.long()[:, None]  # (B, n)
        ids = block_tables[used]
        if int(ids.min()) < 0 or int(ids.max()) >= k_pool.shape[0]:
            raise ValueError(f"block_tables name blocks outside the pool of {k_pool.shape[0]}")
    return mod.paged_decode(q.contiguous(), k_pool.contiguous(), v_pool.contiguous(),
                            block_tables.long().contiguous(), context_lens.long().contiguous())
