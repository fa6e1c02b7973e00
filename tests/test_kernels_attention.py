"""Flash attention and paged decode attention kernels against their PyTorch references.

Under Triton's interpreter on a CPU (tests/conftest.py sets TRITON_INTERPRET=1), on a GPU
compiled. Each kernel's ``validate()`` must pass, and must *fail* on a planted bug:

* flash attention without the accumulator rescale: caught on every case with more than
  one K/V tile (S > 16), where the running max grows and old terms keep a stale scale;
* flash attention whose causal mask lets a query see one key past its own position:
  caught on the prefill cases, by value; decode cases (one query that sees every key
  anyway) still pass, which shows the check is specific;
* paged attention that counts the last block as full (ignores context_lens inside it):
  caught where a context length is not a multiple of the block size, because the pool's
  stale slots hold random values; the full-blocks case still passes.
"""

from __future__ import annotations

import math

import pytest
import torch

from infer_lab.kernels import flash_attention as fa
from infer_lab.kernels import paged_attention as pa
from infer_lab.kernels import runtime
from infer_lab.kernels.runtime import tl
from infer_lab.serving.paged_attention import decode_blocks, paged_decode_attention

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or runtime.interpreting()),
                                reason="needs a GPU or TRITON_INTERPRET=1")


# -- planted bugs: the real kernels with one line wrong -----------------------------------
@triton.jit
def _flash_no_rescale(Q, K, V, O, QPOS, KPOS, T, S, n_head, group, scale, sqb, sqh, sqt,
                      skb, skh, sks, svb, svh, svs, sob, soh, sot, spb, skpb, D: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // n_head, pid_bh % n_head
    kvh = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    qp = tl.load(QPOS + b * spb + offs_m, mask=row_ok, other=0)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < S
        k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * sks + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svs + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        kp = tl.load(KPOS + b * skpb + offs_n, mask=col_ok, other=-1)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        seen = ((kp[None, :] >= 0) & (kp[None, :] <= qp[:, None])) | (qp[:, None] < 0)
        s = tl.where(seen & col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l = alpha * l + tl.sum(p, 1)
        # BUG: no `acc * alpha`: earlier tiles' terms stay relative to the old max.
        acc = acc + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
             (acc / l[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _flash_sees_next(Q, K, V, O, QPOS, KPOS, T, S, n_head, group, scale, sqb, sqh, sqt,
                     skb, skh, sks, svb, svh, svs, sob, soh, sot, spb, skpb, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // n_head, pid_bh % n_head
    kvh = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < T
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    qp = tl.load(QPOS + b * spb + offs_m, mask=row_ok, other=0)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, S, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < S
        k = tl.load(K + b * skb + kvh * skh + offs_n[:, None] * sks + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + kvh * svh + offs_n[:, None] * svs + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        kp = tl.load(KPOS + b * skpb + offs_n, mask=col_ok, other=-1)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        # BUG: `<= qp + 1`: a query also sees the key one position past its own.
        seen = ((kp[None, :] >= 0) & (kp[None, :] <= qp[:, None] + 1)) | (qp[:, None] < 0)
        s = tl.where(seen & col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l = alpha * l + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :],
             (acc / l[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _paged_full_last_block(Q, KP, VP, TABLES, LENS, M_PART, L_PART, ACC_PART,
                           blocks_per_split, n_kv_head, rep, block_size, head_dim,
                           scale, sqb, sqh, skn, skh, sks, svn, svh, svs, stb, smb, smh,
                           sab, sah, sas, R: tl.constexpr, BS: tl.constexpr, D: tl.constexpr):
    pid, split = tl.program_id(0), tl.program_id(1)
    b, g = pid // n_kv_head, pid % n_kv_head
    offs_r, offs_t, offs_d = tl.arange(0, R), tl.arange(0, BS), tl.arange(0, D)
    r_ok, t_ok, d_ok = offs_r < rep, offs_t < block_size, offs_d < head_dim
    heads = g * rep + offs_r
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + offs_d[None, :],
                mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    ctx = tl.load(LENS + b)
    m = tl.full((R,), float("-inf"), tl.float32)
    l = tl.zeros((R,), tl.float32)
    acc = tl.zeros((R, D), tl.float32)
    for i in range(blocks_per_split):
        j = split * blocks_per_split + i
        pos = j * block_size + offs_t
        # BUG: the context rounded up to whole blocks: the last block's tail counts too.
        live = t_ok & (pos < (ctx + block_size - 1) // block_size * block_size)
        blk = tl.load(TABLES + b * stb + j, mask=j * block_size < ctx, other=0).to(tl.int64)
        kv_mask = live[:, None] & d_ok[None, :]
        k = tl.load(KP + blk * skn + g * skh + offs_t[:, None] * sks + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(VP + blk * svn + g * svh + offs_t[:, None] * svs + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2) * scale
        s = tl.where(live[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l = alpha * l + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)
        m = m_new
    part = b * smb + heads * smh + split
    tl.store(M_PART + part, m, mask=r_ok)
    tl.store(L_PART + part, l, mask=r_ok)
    tl.store(ACC_PART + b * sab + heads[:, None] * sah + split * sas + offs_d[None, :], acc,
             mask=r_ok[:, None] & d_ok[None, :])


def _failed(report) -> set[str]:
    return {c.name for c in report.failures}


# -- flash attention ----------------------------------------------------------------------
def test_flash_validate_passes():
    report = fa.validate()
    assert report.passed, str(report)


def test_flash_catches_missing_rescale():
    report = fa.validate(_flash_no_rescale)
    assert report.passed is False
    assert {"gqa2-fp16", "left-pad"} <= _failed(report), str(report)  # S > one tile
    assert "one-tile" not in _failed(report)  # one tile: nothing to rescale


def test_flash_catches_causal_off_by_one():
    report = fa.validate(_flash_sees_next)
    assert report.passed is False
    assert {"causal-tail", "left-pad"} <= _failed(report), str(report)
    assert not {"single-query", "decode-left"} & _failed(report)


def test_online_softmax_step_is_the_kernels_loop():
    """The PyTorch tiled loop (the lab's exercise) equals attention, tile by tile."""
    case = next(c for c in fa.cases() if c.name == "left-pad")
    q, k, v, q_pos, k_pos = case.args
    rep = q.shape[1] // k.shape[1]
    mask = fa.attention_mask(q_pos, k_pos, None)
    got = fa.tiled_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                             mask, block=8)
    torch.testing.assert_close(got, fa.flash_attention_reference(*case.args))


def test_flash_matches_sdpa_on_model_layout():
    """q as the model makes it, a transposed view (B, T, H, D) -> (B, H, T, D)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 20, 4, 16, generator=g).transpose(1, 2)  # non-contiguous
    k, v = (torch.randn(2, 2, 20, 16, generator=g) for _ in range(2))
    torch.testing.assert_close(fa.flash_attention(q, k, v), fa.sdpa(q, k, v, None))


def test_flash_bad_input():
    q, k = torch.randn(1, 2, 4, 24), torch.randn(1, 2, 4, 24)
    with pytest.raises(ValueError, match="power of two"):
        fa.flash_attention_triton(q, k, k)
    q, k = torch.randn(1, 3, 4, 16), torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        fa.flash_attention_triton(q, k, k)
    with pytest.raises(ValueError, match="both q_pos and k_pos"):
        fa.flash_attention_triton(k, k, k, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="bfloat16"):
        fa.flash_attention_triton(*(torch.randn(1, 2, 4, 16, dtype=torch.bfloat16),) * 3)


def test_flash_dispatcher_falls_back_without_interpreter(monkeypatch):
    q = torch.randn(1, 2, 5, 16)

    def boom(*a, **k):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(fa, "flash_attention_triton", boom)
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    if not torch.cuda.is_available():
        assert runtime.backend(q) == "reference"
        torch.testing.assert_close(fa.flash_attention(q, q, q), fa.sdpa(q, q, q, None))
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    with pytest.raises(AssertionError, match="the kernel ran"):
        fa.flash_attention(q, q, q)


# -- paged attention ----------------------------------------------------------------------
def test_paged_validate_passes():
    report = pa.validate()
    assert report.passed, str(report)


def test_paged_catches_ignored_context_in_last_block():
    report = pa.validate(_paged_full_last_block)
    assert report.passed is False
    assert {"partial-last", "odd-sizes"} <= _failed(report), str(report)
    assert "full-blocks" not in _failed(report)  # every block full: nothing to ignore


def test_paged_equals_block_by_block_reference():
    """Also the serving package's block-by-block (flash-decoding style) reference."""
    for case in pa.cases():
        q, k_pool, v_pool, tables, lens = case.args
        bs = k_pool.shape[2]
        b = decode_blocks([t[:math.ceil(n / bs)] for t, n in zip(tables.tolist(),
                                                               lens.tolist())],
                          lens.tolist(), bs, q.device)
        want = paged_decode_attention(q.float(), k_pool.float(), v_pool.float(),
                                      b["blocks"], b["rows"], b["bias"])
        got = pa.paged_attention(*case.args)
        torch.testing.assert_close(got.float(), want, atol=case.atol, rtol=case.rtol)


def test_paged_split_count_does_not_matter():
    case = next(c for c in pa.cases() if c.name == "gqa4-fp16")
    outs = [pa.paged_attention_triton(*case.args, blocks_per_split=n) for n in (1, 2, 16)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=case.atol, rtol=case.rtol)


def test_paged_bad_input():
    q, pool = torch.randn(1, 2, 16), torch.randn(4, 2, 4, 16)
    table = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="context_lens must lie in"):
        pa.paged_attention_triton(q, pool, pool, table, torch.tensor([0]))
    with pytest.raises(ValueError, match="context_lens must lie in"):
        pa.paged_attention_triton(q, pool, pool, table, torch.tensor([9]))
    with pytest.raises(ValueError, match="outside the pool"):
        pa.paged_attention_triton(q, pool, pool, torch.tensor([[0, 7]]), torch.tensor([6]))
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        pa.paged_attention_triton(torch.randn(1, 3, 16), pool, pool, table, torch.tensor([3]))


def test_paged_dispatcher_falls_back_without_interpreter(monkeypatch):
    case = pa.cases()[2]

    def boom(*a, **k):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(pa, "paged_attention_triton", boom)
    if not torch.cuda.is_available():
        monkeypatch.setattr(runtime, "interpreting", lambda: False)
        torch.testing.assert_close(pa.paged_attention(*case.args),
                                   pa.paged_attention_reference(*case.args))
    monkeypatch.setattr(runtime, "interpreting", lambda: True)
    with pytest.raises(AssertionError, match="the kernel ran"):
        pa.paged_attention(*case.args)
