"""Flash attention, forward: attention that never writes the (T, S) score matrix to memory.

FlashAttention (Dao et al. 2022) computes softmax(q k^T / sqrt(d)) v tile by tile: a
program holds a block of queries in registers and streams K/V past it, one tile of keys
at a time, keeping per query row a running max m, a running sum l and an unnormalised
output acc. After each tile (the *online softmax*, Milakov and Gimelshein 2018):

    m_new = max(m, rowmax(s))                 s = q k_tile^T / sqrt(d)
    p     = exp(s - m_new)
    l     = exp(m - m_new) * l + rowsum(p)
    acc   = exp(m - m_new) * acc + p v_tile    # rescale: old terms were relative to m
    o     = acc / l                            # once, after the last tile

so memory traffic is O(T d + S d) instead of O(T S). FlashAttention-2 (Dao 2023) puts
the query block in the outer loop (one program per (batch, head, query block), K/V
streamed in the inner loop) and divides by l once at the end: that is the loop here.

Who may attend to whom comes from positions, exactly as :func:`infer_lab.kv_cache.
attention_mask` says (key position >= 0 and <= the query's; a padding query, position
-1, sees every key), so one kernel serves a causal prefill, a chunk that continues a
cache, and a batch of left- or right-padded sequences. Grouped-query attention: query
head h reads KV head h // (n_head // n_kv_head), without copying K/V. The reference is
:func:`infer_lab.kv_cache.sdpa` with that mask.

Interpreter limits: every program runs in numpy one after another (keep T, S tiny);
``tl.dot`` needs tiles of at least 16 on a GPU, hence head_dim a power of two >= 16.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from ..kv_cache import attention_mask, sdpa
from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, jit, tl, triton

BLOCK_M, BLOCK_N = 16, 16  # queries per program, keys per tile (tl.dot's smallest tile)


def flash_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              q_pos: torch.Tensor | None = None,
                              k_pos: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, T, D), k, v (B, H_kv, S, D); q_pos (B, T), k_pos (B, S) positions (-1 =
    padding), or both None for SDPA's causal rule (query i sees keys 0..i; all keys
    when T == 1). Returns (B, H, T, D)."""
    mask = None if q_pos is None else attention_mask(q_pos, k_pos, None)  # (B, 1, T, S)
    return sdpa(q, k, v, mask)


def online_softmax_step(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor,
                        scores: torch.Tensor, v: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One K/V tile's update of the online softmax, in plain PyTorch.

    m, l (..., M): running max and sum; acc (..., M, D); scores (..., M, N), already
    scaled and masked (-inf); v (..., N, D). Returns the new (m, l, acc).
    """
    m_new = torch.maximum(m, scores.amax(-1))  # (..., M)
    # A row that has seen only masked keys has m_new = -inf: subtract 0 there instead,
    # so exp gives 0 (and not exp(-inf + inf) = nan).
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - m_safe)  # (..., M): how much the old terms shrink
    p = torch.exp(scores - m_safe[..., None])  # (..., M, N)
    return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + p @ v


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    block: int = BLOCK_N, step=online_softmax_step) -> torch.Tensor:
    """The kernel's loop in PyTorch: K/V a tile at a time through ``step`` (pass your own).

    q (B, H, T, D), k, v (B, H, S, D) (GQA already expanded), mask (B, 1|H, T, S) bool.
    """
    B, H, T, D = q.shape
    m = q.new_full((B, H, T), float("-inf"), dtype=torch.float32)
    l = torch.zeros(B, H, T, device=q.device)
    acc = torch.zeros(B, H, T, D, device=q.device)
    for j in range(0, k.shape[2], block):
        s = q.float() @ k[:, :, j:j + block].float().transpose(-1, -2) / math.sqrt(D)
        s = s.masked_fill(~mask[..., j:j + block], float("-inf"))  # (B, H, T, block)
        m, l, acc = step(m, l, acc, s, v[:, :, j:j + block].float())
    return (acc / l[..., None]).to(q.dtype)  # (B, H, T, D)


@jit
def _flash_attention_kernel(Q, K, V, O, QPOS, KPOS, T, S, n_head, group, scale,
                            sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot,
                            spb, skpb, D: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One program: BLOCK_M queries of one (batch, head), every K/V tile in turn."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // n_head, pid_bh % n_head
    kvh = h // group  # GQA: `group` query heads share this KV head
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
    qp = tl.load(QPOS + b * spb + offs_m, mask=row_ok, other=0)  # (BLOCK_M,)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        col_ok = offs_n < S
        k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * sks + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
        v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svs + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
        kp = tl.load(KPOS + b * skpb + offs_n, mask=col_ok, other=-1)  # (BLOCK_N,)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N)
        # attention_mask's rule; slots past S are never keys, even for a padding query.
        seen = ((kp[None, :] >= 0) & (kp[None, :] <= qp[:, None])) | (qp[:, None] < 0)
        s = tl.where(seen & col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: no nan
        alpha = tl.exp(m - m_safe)  # (BLOCK_M,)
        p = tl.exp(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N)
        l = alpha * l + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    o = acc / l[:, None]  # the one division, after the last tile (FlashAttention-2)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=row_ok[:, None])


def head_dim_error(D: int) -> str | None:
    """Why the kernel cannot take heads of size D (tl.dot tiles), or None."""
    if D < 16 or D > 256 or D & (D - 1):
        return f"the flash kernel needs head_dim a power of two from 16 to 256, got {D}"
    return None


def _default_positions(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that reproduce ``sdpa(mask=None)``: causal from the top left for T > 1
    (SDPA's is_causal), every key for a single query."""
    B, T, S = q.shape[0], q.shape[2], k.shape[2]
    k_pos = torch.arange(S, device=q.device).expand(B, S)
    q_pos = torch.arange(T, device=q.device) if T != 1 else torch.full((1,), S, device=q.device)
    return q_pos.expand(B, T), k_pos


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           q_pos: torch.Tensor | None = None, k_pos: torch.Tensor | None = None,
                           kernel=None) -> torch.Tensor:
    """Launch the kernel (or ``kernel``, a variant with the same signature): checks first."""
    kernel = kernel or _flash_attention_kernel
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"want q (B, H, T, D) and k, v (B, H_kv, S, D); got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch "
                         "or head_dim")
    if H_kv == 0 or H % H_kv:
        raise ValueError(f"n_head {H} must be a multiple of n_kv_head {H_kv}")
    if head_dim_error(D):
        raise ValueError(head_dim_error(D))
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16,
                                                               torch.bfloat16):
        raise ValueError(f"q, k, v must share one float dtype; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.dtype == torch.bfloat16 and backend(q) == "interpreter":
        raise ValueError("Triton's interpreter has no bfloat16 arithmetic: use fp32 or fp16")
    if (q_pos is None) != (k_pos is None):
        raise ValueError("give both q_pos and k_pos, or neither")
    if q_pos is None:
        q_pos, k_pos = _default_positions(q, k)
    if q_pos.shape != (B, T) or k_pos.shape != (B, S):
        raise ValueError(f"want q_pos (B, T) = {(B, T)} and k_pos (B, S) = {(B, S)}; got "
                         f"{tuple(q_pos.shape)} and {tuple(k_pos.shape)}")
    if q_pos.is_floating_point() or k_pos.is_floating_point():
        raise ValueError("positions must be integer tensors")
    backend(q, k, v, q_pos, k_pos)  # one device for all
    if S == 0:
        raise ValueError("attention over zero keys is undefined (softmax of nothing)")
    # The kernel steps along T, S and D with unit stride in D; positions along T, S.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    q_pos, k_pos = q_pos.long().contiguous(), k_pos.long().contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, T, D)
    if out.numel() == 0:
        return out
    # fp32 on a GPU would default to tf32 in tl.dot (10-bit mantissa): ask for full fp32.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(T, BLOCK_M), B * H)
    kernel[grid](q, k, v, out, q_pos, k_pos, T, S, H, H // H_kv, 1 / math.sqrt(D),
                 *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                 q_pos.stride(0), k_pos.stride(0), D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                 PRECISION=precision)
    return out


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    q_pos: torch.Tensor | None = None, k_pos: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k, v (B, H_kv, S, D) with positions' mask: the
    Triton kernel on a GPU (or under the interpreter), else the reference."""
    extra = () if q_pos is None else (q_pos, k_pos)
    if backend(q, k, v, *extra) == "reference":
        return flash_attention_reference(q, k, v, q_pos, k_pos)
    return flash_attention_triton(q, k, v, q_pos, k_pos)


# -- grading ------------------------------------------------------------------------------
def _case(name: str, seed: int, B: int, H: int, H_kv: int, T: int, S: int, D: int,
          dtype: torch.dtype, layout: str = "causal") -> Case:
    """layout: 'causal' (no positions); else rows of random lengths (the first one S long)
    whose last T tokens are the queries, padded on the 'right' or on the left ('left',
    'chunk': a chunk continuing a cache, 'decode': T = 1), as a KV cache lays them out."""
    g = generator(seed, name)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype)
               for h, n in ((H, T), (H_kv, S), (H_kv, S)))
    atol, rtol = tolerance(dtype)
    if layout == "causal":
        return Case(name, (q, k, v), atol=atol, rtol=rtol)
    lens = torch.randint(max(1, T), S + 1, (B,), generator=g)
    lens[0] = S  # one row fills the batch
    q_pos, k_pos = torch.full((B, T), -1), torch.full((B, S), -1)
    for b, n in enumerate(lens.tolist()):
        pos = torch.arange(n)
        if layout == "right":  # keys 0..n-1 then padding; the last T keys are queried
            k_pos[b, :n], q_pos[b] = pos, pos[n - T:]
        else:  # left padding (or a chunk/decode continuing a cache): real keys at the end
            k_pos[b, S - n:] = pos
            q_pos[b] = pos[n - T:]
    if layout == "left" and B > 1 and T > 1:
        q_pos[1, :1] = -1  # a padding query inside the chunk: it sees every key
    return Case(name, (q, k, v, q_pos, k_pos), atol=atol, rtol=rtol)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Fixed shapes (tails, GQA 1/2/4, one query, padding both sides), then random ones."""
    f32, f16 = torch.float32, torch.float16
    fixed = [
        ("one-tile", 1, 1, 1, 16, 16, 16, f32, "causal"),
        ("causal-tail", 1, 2, 2, 19, 19, 16, f32, "causal"),  # partial query and key tiles
        ("gqa2-fp16", 1, 4, 2, 33, 33, 32, f16, "causal"),
        ("gqa4-chunk", 2, 4, 1, 7, 37, 16, f32, "chunk"),  # T new tokens after a cache
        ("single-query", 2, 2, 1, 1, 21, 32, f32, "causal"),
        ("decode-left", 2, 2, 2, 1, 23, 16, f16, "decode"),
        ("left-pad", 2, 2, 1, 9, 29, 16, f32, "left"),
        ("right-pad", 2, 4, 2, 5, 18, 32, f16, "right"),
        ("empty-query", 1, 2, 2, 0, 5, 16, f32, "causal"),
    ]
    out = [_case(n, seed, *rest) for n, *rest in fixed]
    g = generator(seed, "random-shapes")
    for i in range(3):
        H_kv = int(torch.randint(1, 3, (1,), generator=g))
        H = H_kv * (1, 2, 4)[i]
        S = int(torch.randint(2, 41, (1,), generator=g))
        T = int(torch.randint(1, S + 1, (1,), generator=g))
        layout = ("left", "right", "chunk")[i]
        out.append(_case(f"random-{i}-{layout}", seed, 2, H, H_kv, T, S, (16, 32)[i % 2],
                         (f32, f16)[i % 2], layout))
    device = device_or_default(device)
    return [c.to(device) for c in out]


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """Grade ``fn`` (default: the Triton launch) against the reference on :func:`cases`.

    ``fn`` is a callable with flash_attention's signature, or a ``@jit`` kernel with
    the kernel's signature (a learner's variant), launched by the same wrapper.
    """
    if fn is None or hasattr(fn, "fn"):  # a jit kernel (Triton's or runtime's stand-in)
        kernel = fn
        fn = lambda *a: flash_attention_triton(*a, kernel=kernel)
    return compare("flash_attention", fn, flash_attention_reference, cases(seed, device))


def benchmark(shapes: list[tuple[int, int, int, int, int]] | None = None,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              repeats: int = 5) -> list[dict]:
    """Median time of a causal prefill for (B, H, H_kv, T, D): ms, GB/s (q, k, v read, o
    written once: what a fused kernel moves) and TFLOP/s (the causal half of 4 B H T^2 D).

    On a CPU only the reference is timed: the interpreter is not a speed.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    rows = []
    for B, H, H_kv, T, D in shapes or [(1, 8, 8, 512, 64), (1, 8, 2, 1024, 64)]:
        q = torch.randn(B, H, T, D, device=device, dtype=dtype)
        k, v = (torch.randn(B, H_kv, T, D, device=device, dtype=dtype) for _ in range(2))
        row = {"kernel": "flash_attention", "shape": (B, H, H_kv, T, D), "dtype": str(dtype)}
        moved = (2 * q.numel() + k.numel() + v.numel()) * q.element_size()
        flops = 4 * B * H * T * T * D / 2
        impls = {"reference": partial(flash_attention_reference, q, k, v),
                 "triton": partial(flash_attention_triton, q, k, v)}
        rows += timed_rows(row, impls, backend(q) == "triton", device, repeats, moved, flops,
                           notes={"reference": "SDPA"})
    return rows
