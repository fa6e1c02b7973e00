"""Paged decode attention: K/V read in place from the block pool, split over blocks.

PagedAttention (Kwon et al. 2023, vLLM) keeps K/V in a pool of fixed-size blocks,
(num_blocks, n_kv_head, block_size, head_dim), and finds token t of row b through its
block table: block(t) = block_tables[b, t // block_size], offset(t) = t % block_size.
A decode step has one query per row, so the kernel's work is reading the row's blocks;
nothing is gathered into a padded copy first.

One query per head leaves a GPU idle when the batch is small and the context long, so
the context is split (flash-decoding, Dao et al. 2023): program (row, kv head, split)
attends to its share of the row's blocks and writes a partial result, the max m_s, the
sum l_s = sum exp(s - m_s) and acc_s = sum exp(s - m_s) v over its keys. A second
kernel combines the splits exactly:

    m = max_s m_s,   o = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s

Grouped-query attention: one program serves the n_head / n_kv_head query heads of its KV
head, so each block is read once for all of them. Scores are broadcast products summed
over head_dim (no ``tl.dot``: a handful of query rows is below its 16-row tile), so any
block size and head_dim work (padded to powers of two and masked).

References: :func:`infer_lab.serving.paged_attention.paged_attention` (gather, then
softmax) and its block-by-block :func:`~infer_lab.serving.paged_attention.
paged_decode_attention`. Interpreter limit: block ids are loaded and added to the pool's
address, an integer gather, which the interpreter runs; it would not follow a *pointer*
read from memory.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from ..serving.paged_attention import paged_attention as gather_paged_attention
from .check import Case, Report, compare, device_or_default, generator, tolerance
from .measure import timed_rows
from .runtime import backend, jit, tl, triton

# A row's blocks go to at least MIN_SPLITS programs (a few long rows still fill the GPU's
# cores), each at most MAX_BLOCKS_PER_SPLIT blocks (more splits, more partials to merge).
MAX_BLOCKS_PER_SPLIT, MIN_SPLITS = 16, 4


def paged_attention_reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                              block_tables: torch.Tensor, context_lens: torch.Tensor
                              ) -> torch.Tensor:
    """q (B, H, D), pools (num_blocks, H_kv, bs, D), block_tables (B, n_blocks), context_lens
    (B,) -> (B, H, D): the serving package's gather-then-softmax reference."""
    return gather_paged_attention(q, k_pool, v_pool, block_tables.long(), context_lens)


@jit
def _paged_split_kernel(Q, KP, VP, TABLES, LENS, M_PART, L_PART, ACC_PART,
                        blocks_per_split, n_kv_head, rep, block_size, head_dim,
                        scale, sqb, sqh, skn, skh, sks, svn, svh, svs, stb, smb, smh,
                        sab, sah, sas, R: tl.constexpr, BS: tl.constexpr, D: tl.constexpr):
    """Program (row b, kv head g, split s): the rep query heads of g over s's blocks."""
    pid, split = tl.program_id(0), tl.program_id(1)
    b, g = pid // n_kv_head, pid % n_kv_head
    offs_r, offs_t, offs_d = tl.arange(0, R), tl.arange(0, BS), tl.arange(0, D)
    r_ok, t_ok, d_ok = offs_r < rep, offs_t < block_size, offs_d < head_dim
    heads = g * rep + offs_r  # (R,) query heads served by KV head g
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + offs_d[None, :],
                mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # (R, D)
    ctx = tl.load(LENS + b)
    m = tl.full((R,), float("-inf"), tl.float32)
    l = tl.zeros((R,), tl.float32)
    acc = tl.zeros((R, D), tl.float32)
    for i in range(blocks_per_split):
        j = split * blocks_per_split + i  # the row's j-th block
        pos = j * block_size + offs_t  # (BS,) token positions held by this block
        live = t_ok & (pos < ctx)  # the last block is partly past the context
        # int64: block id * the pool's block stride overflows int32 in a pool of a few GB.
        blk = tl.load(TABLES + b * stb + j, mask=j * block_size < ctx, other=0).to(tl.int64)
        kv_mask = live[:, None] & d_ok[None, :]
        k = tl.load(KP + blk * skn + g * skh + offs_t[:, None] * sks + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)  # (BS, D)
        v = tl.load(VP + blk * svn + g * svh + offs_t[:, None] * svs + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)  # (BS, D)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2) * scale  # (R, BS)
        s = tl.where(live[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: no nan
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])  # (R, BS)
        l = alpha * l + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)  # (R, D)
        m = m_new
    part = b * smb + heads * smh + split  # (R,) this split's slot of each head
    tl.store(M_PART + part, m, mask=r_ok)
    tl.store(L_PART + part, l, mask=r_ok)
    tl.store(ACC_PART + b * sab + heads[:, None] * sah + split * sas + offs_d[None, :], acc,
             mask=r_ok[:, None] & d_ok[None, :])


@jit
def _paged_combine_kernel(M_PART, L_PART, ACC_PART, O, n_splits, n_head, head_dim,
                          smb, smh, sab, sah, sas, sob, soh,
                          NS: tl.constexpr, D: tl.constexpr):
    """Program (row b, head h): merge the splits' (m, l, acc) into one softmax."""
    pid = tl.program_id(0)
    b, h = pid // n_head, pid % n_head
    offs_s, offs_d = tl.arange(0, NS), tl.arange(0, D)
    s_ok, d_ok = offs_s < n_splits, offs_d < head_dim
    m_s = tl.load(M_PART + b * smb + h * smh + offs_s, mask=s_ok, other=float("-inf"))
    l_s = tl.load(L_PART + b * smb + h * smh + offs_s, mask=s_ok, other=0.0)  # (NS,)
    acc_s = tl.load(ACC_PART + b * sab + h * sah + offs_s[:, None] * sas + offs_d[None, :],
                    mask=s_ok[:, None] & d_ok[None, :], other=0.0)  # (NS, D)
    m = tl.max(m_s, 0)
    # A split past the row's end has m_s = -inf and weighs exp(-inf) = 0.
    w = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - m))  # (NS,)
    o = tl.sum(w[:, None] * acc_s, 0) / tl.sum(w * l_s, 0)  # (D,)
    tl.store(O + b * sob + h * soh + offs_d, o.to(O.dtype.element_ty), mask=d_ok)


def _check(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
           block_tables: torch.Tensor, context_lens: torch.Tensor, values: bool = True
           ) -> None:
    if q.dim() != 3 or k_pool.dim() != 4 or v_pool.shape != k_pool.shape:
        raise ValueError(f"want q (B, H, D) and pools (num_blocks, H_kv, block_size, D); got "
                         f"q {tuple(q.shape)}, k_pool {tuple(k_pool.shape)}, v_pool "
                         f"{tuple(v_pool.shape)}")
    (B, H, D), (num_blocks, H_kv, bs, Dk) = q.shape, k_pool.shape
    if D != Dk or H_kv == 0 or H % H_kv:
        raise ValueError(f"q {tuple(q.shape)} and pool {tuple(k_pool.shape)}: head_dim must "
                         f"match and n_head a multiple of n_kv_head")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or context_lens.shape != (B,):
        raise ValueError(f"want block_tables (B, n_blocks) and context_lens (B,) for B = {B}; "
                         f"got {tuple(block_tables.shape)} and {tuple(context_lens.shape)}")
    if block_tables.is_floating_point() or context_lens.is_floating_point():
        raise ValueError("block_tables and context_lens must be integer tensors")
    if not (q.dtype == k_pool.dtype == v_pool.dtype) or not q.is_floating_point():
        raise ValueError(f"q and the pools must share one float dtype; got {q.dtype}, "
                         f"{k_pool.dtype}, {v_pool.dtype}")
    if q.stride(-1) != 1 or k_pool.stride(-1) != 1 or v_pool.stride(-1) != 1:
        raise ValueError("q and the pools must be contiguous along head_dim")
    if B == 0 or not values:
        return
    # One host sync: a wrong length or block id would read another sequence's memory.
    lens = context_lens.long()
    if int(lens.min()) < 1 or int(lens.max()) > block_tables.shape[1] * bs:
        raise ValueError(f"context_lens must lie in 1 .. n_blocks * block_size = "
                         f"{block_tables.shape[1] * bs}; got {context_lens.tolist()}")
    used = torch.arange(block_tables.shape[1], device=lens.device) * bs < lens[:, None]
    ids = block_tables[used]
    if int(ids.min()) < 0 or int(ids.max()) >= num_blocks:
        raise ValueError(f"block_tables name blocks outside the pool of {num_blocks}")


def paged_attention_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           kernel=None, blocks_per_split: int | None = None,
                           check_values: bool = True) -> torch.Tensor:
    """Launch the split kernel (or ``kernel``, a variant with its signature), then the
    combine. blocks_per_split: default splits each row in at least MIN_SPLITS pieces.
    check_values=False skips the check of lengths and block ids (host syncs): for a
    caller that built the tables itself, such as the serving engine's pool."""
    _check(q, k_pool, v_pool, block_tables, context_lens, check_values)
    backend(q, k_pool, v_pool, block_tables, context_lens)  # one device for all
    if q.dtype == torch.bfloat16 and backend(q) == "interpreter":
        raise ValueError("Triton's interpreter has no bfloat16 arithmetic: use fp32 or fp16")
    kernel = kernel or _paged_split_kernel
    (B, H, D), (_, H_kv, bs, _) = q.shape, k_pool.shape
    n_blocks = block_tables.shape[1]
    out = torch.empty_like(q)  # (B, H, D)
    if q.numel() == 0:
        return out
    bps = blocks_per_split or max(1, min(MAX_BLOCKS_PER_SPLIT, triton.cdiv(n_blocks, MIN_SPLITS)))
    n_splits = triton.cdiv(n_blocks, bps)
    # fp32 partials whatever q's dtype: the combine must not round what it merges.
    m_part = q.new_empty(B, H, n_splits, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = q.new_empty(B, H, n_splits, D, dtype=torch.float32)
    tables, lens = block_tables.contiguous(), context_lens.contiguous()
    p2 = triton.next_power_of_2
    kernel[(B * H_kv, n_splits)](
        q, k_pool, v_pool, tables, lens, m_part, l_part, acc_part, bps, H_kv,
        H // H_kv, bs, D, 1 / math.sqrt(D), q.stride(0), q.stride(1), *k_pool.stride()[:3],
        *v_pool.stride()[:3], tables.stride(0), m_part.stride(0), m_part.stride(1),
        *acc_part.stride()[:3], R=p2(H // H_kv), BS=p2(bs), D=p2(D))
    _paged_combine_kernel[(B * H,)](
        m_part, l_part, acc_part, out, n_splits, H, D, m_part.stride(0), m_part.stride(1),
        *acc_part.stride()[:3], out.stride(0), out.stride(1), NS=p2(n_splits), D=p2(D))
    return out


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """Decode attention through block tables: the kernel on a GPU (or under the
    interpreter), else the gather reference."""
    if backend(q, k_pool, v_pool, block_tables, context_lens) == "reference":
        return paged_attention_reference(q, k_pool, v_pool, block_tables, context_lens)
    return paged_attention_triton(q, k_pool, v_pool, block_tables, context_lens)


# -- grading ------------------------------------------------------------------------------
def _case(name: str, seed: int, lens: list[int], H: int, H_kv: int, bs: int, D: int,
          dtype: torch.dtype, num_blocks: int = 24) -> Case:
    """Rows of the given context lengths, their blocks scattered over a random pool.

    Every slot of the pool holds random values, so a kernel that reads a slot past a
    row's end (or another row's block) gets a different answer.
    """
    g = generator(seed, name)
    B, width = len(lens), max(-(-n // bs) for n in lens) + 1  # a spare column, unused
    q = torch.randn(B, H, D, generator=g).to(dtype)
    k_pool, v_pool = (torch.randn(num_blocks, H_kv, bs, D, generator=g).to(dtype)
                      for _ in range(2))
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in lens])
    lens_t = torch.tensor(lens)
    atol, rtol = tolerance(dtype)
    return Case(name, (q, k_pool, v_pool, tables.to(torch.int32), lens_t), atol=atol, rtol=rtol)


def cases(seed: int = 0, device: torch.device | str | None = None) -> list[Case]:
    """Fixed rows (one token, exact blocks, partial last blocks, GQA 1/2/4, odd block size
    and head_dim), then random ones."""
    f32, f16 = torch.float32, torch.float16
    out = [
        _case("single-token", seed, [1], 2, 2, 4, 16, f32),
        _case("full-blocks", seed, [8, 16], 2, 2, 4, 16, f32),
        _case("partial-last", seed, [5, 11, 2], 4, 2, 4, 32, f32),  # GQA 2
        _case("gqa4-fp16", seed, [13, 30], 4, 1, 8, 16, f16),
        _case("odd-sizes", seed, [7, 19], 3, 3, 3, 20, f32),  # block 3, head_dim 20
        _case("one-split", seed, [3], 2, 1, 16, 32, f16),
    ]
    g = generator(seed, "random-shapes")
    for i in range(3):
        bs = (4, 8, 5)[i]
        lens = torch.randint(1, 41, (2,), generator=g).tolist()
        H_kv = int(torch.randint(1, 3, (1,), generator=g))
        out.append(_case(f"random-{i}", seed, lens, H_kv * (1, 2, 4)[i], H_kv, bs,
                         (16, 32, 16)[i], (f32, f16, f32)[i]))
    device = device_or_default(device)
    return [c.to(device) for c in out]


def validate(fn=None, seed: int = 0, device: torch.device | str | None = None) -> Report:
    """Grade ``fn`` (default: the Triton launch; or a ``@jit`` split kernel with the
    split kernel's signature) against the gather reference on :func:`cases`."""
    if fn is None or hasattr(fn, "fn"):  # a jit kernel: launch it through the wrapper
        kernel = fn
        fn = lambda *a: paged_attention_triton(*a, kernel=kernel)
    return compare("paged_attention", fn, paged_attention_reference, cases(seed, device))


def benchmark(shapes: list[tuple[int, int, int, int, int]] | None = None,
              dtype: torch.dtype | None = None, device: torch.device | str | None = None,
              repeats: int = 5, block_size: int = 16) -> list[dict]:
    """Median time of a decode step for (B, H, H_kv, context, D): ms and GB/s of K/V read
    (every cached token's K and V once: the bound of decode attention).

    On a CPU only the reference is timed: the interpreter is not a speed.
    """
    device = device_or_default(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    rows = []
    for B, H, H_kv, ctx, D in shapes or [(8, 8, 2, 1024, 64), (1, 8, 8, 4096, 64)]:
        n = -(-ctx // block_size)
        pools = [torch.randn(B * n, H_kv, block_size, D, device=device, dtype=dtype)
                 for _ in range(2)]
        args = (torch.randn(B, H, D, device=device, dtype=dtype), *pools,
                torch.randperm(B * n, device=device).view(B, n),  # scattered blocks
                torch.full((B,), ctx, device=device))
        row = {"kernel": "paged_attention", "shape": (B, H, H_kv, ctx, D), "dtype": str(dtype)}
        moved = 2 * B * ctx * H_kv * D * pools[0].element_size()
        impls = {"reference": partial(paged_attention_reference, *args),
                 "triton": partial(paged_attention_triton, *args)}
        rows += timed_rows(row, impls, backend(args[0]) == "triton", device, repeats, moved,
                           notes={"reference": "gather, then softmax"})
    return rows
