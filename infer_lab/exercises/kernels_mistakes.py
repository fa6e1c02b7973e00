"""Wrong kernels a learner might write for lab 07's exercises, one plausible bug each.

Each has the signature of the kernel it imitates, so the checker launches it through the
same wrapper; :mod:`.kernels` registers them with their hints, and the tests prove the
checker rejects every one and names its hint. Importing this imports Triton (or the
stand-ins of :mod:`infer_lab.kernels.runtime` without it): it loads on the first check.
"""

from __future__ import annotations

from ..kernels.runtime import jit, tl


# -- fused softmax (softmax._softmax_kernel's signature) ------------------------------------
@jit
def softmax_no_max(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf"))
    num = tl.exp(x.to(tl.float32))  # exp(100) overflows fp32: inf / inf = nan
    y = num / tl.sum(num, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def softmax_pad_zero(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)  # padding adds e^-m
    x = x.to(tl.float32)
    num = tl.exp(x - tl.max(x, axis=0))
    y = num / tl.sum(num, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def softmax_wrong_sum(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=-float("inf"))
    x = x.to(tl.float32)
    num = tl.exp(x - tl.max(x, axis=0))
    y = num / tl.sum(tl.exp(x), axis=0)  # the unshifted sum: off by a factor exp(m)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def softmax_no_mask(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * x_row_stride + cols).to(tl.float32)  # reads the next row
    num = tl.exp(x - tl.max(x, axis=0))
    y = num / tl.sum(num, axis=0)
    tl.store(y_ptr + row * y_row_stride + cols, y.to(y_ptr.dtype.element_ty))  # writes it


# -- online softmax (online_softmax._online_softmax_kernel's signature) -----------------------
@jit
def online_no_max(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    l = 0.0
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        l = l + tl.sum(tl.exp(x), axis=0)  # no max: exp(100) overflows fp32 to inf
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        y = tl.exp(x) / l  # inf / inf = nan on large logits
        tl.store(y_ptr + row * y_row_stride + start + cols, y.to(y_ptr.dtype.element_ty),
                 mask=mask)


@jit
def online_no_rescale(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = float("-inf")
    l = 0.0
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        l = l + tl.sum(tl.exp(x - m_new), axis=0)  # old terms still relative to the old m
        m = m_new
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        y = tl.exp(x - m) / l
        tl.store(y_ptr + row * y_row_stride + start + cols, y.to(y_ptr.dtype.element_ty),
                 mask=mask)


@jit
def online_tile_max(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = float("-inf")
    l = 0.0
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        m_new = tl.max(x, axis=0)  # this tile's max only: forgets a larger earlier one
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        y = tl.exp(x - m) / l
        tl.store(y_ptr + row * y_row_stride + start + cols, y.to(y_ptr.dtype.element_ty),
                 mask=mask)


@jit
def online_unmasked_write(x_ptr, y_ptr, n_cols, x_row_stride, y_row_stride,
                          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = float("-inf")
    l = 0.0
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * x_row_stride + start + cols, mask=mask,
                    other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, n_cols, BLOCK):  # the last tile runs past n_cols, unmasked
        x = tl.load(x_ptr + row * x_row_stride + start + cols).to(tl.float32)
        y = tl.exp(x - m) / l
        tl.store(y_ptr + row * y_row_stride + start + cols, y.to(y_ptr.dtype.element_ty))


# -- int4 GEMV (quant_gemv._int4_gemv_kernel's signature): the K loop gets one thing wrong ----
@jit
def int4_nibbles_swapped(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
                         HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        j_ok = offs_j < K // 2
        w_mask, x_mask = n_ok[:, None] & j_ok[None, :], m_ok[:, None] & j_ok[None, :]
        packed = tl.load(W + offs_n[:, None] * swn + offs_j[None, :], mask=w_mask, other=0)
        x_lo = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :], mask=x_mask,
                       other=0.0).to(tl.float32)
        x_hi = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :] + 1, mask=x_mask,
                       other=0.0).to(tl.float32)
        lo = (packed >> 4).to(tl.float32)  # the high nibble is code 2j+1, not 2j
        hi = (packed & 0xF).to(tl.float32)
        grp = (2 * offs_j) // G
        s = tl.load(S + offs_n[:, None] * ssn + grp[None, :] * ssg, mask=w_mask,
                    other=0.0).to(tl.float32)
        z = 8.0
        if HAS_ZERO:
            z = tl.load(Z + offs_n[:, None] * szn + grp[None, :] * szg, mask=w_mask,
                        other=0).to(tl.float32)
        acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2)
        acc += tl.sum(x_hi[:, None, :] * ((hi - z) * s)[None, :, :], 2)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@jit
def int4_no_zero(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
                 HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        j_ok = offs_j < K // 2
        w_mask, x_mask = n_ok[:, None] & j_ok[None, :], m_ok[:, None] & j_ok[None, :]
        packed = tl.load(W + offs_n[:, None] * swn + offs_j[None, :], mask=w_mask, other=0)
        x_lo = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :], mask=x_mask,
                       other=0.0).to(tl.float32)
        x_hi = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :] + 1, mask=x_mask,
                       other=0.0).to(tl.float32)
        lo = (packed & 0xF).to(tl.float32)
        hi = (packed >> 4).to(tl.float32)
        grp = (2 * offs_j) // G
        s = tl.load(S + offs_n[:, None] * ssn + grp[None, :] * ssg, mask=w_mask,
                    other=0.0).to(tl.float32)
        acc += tl.sum(x_lo[:, None, :] * (lo * s)[None, :, :], 2)  # codes used as stored,
        acc += tl.sum(x_hi[:, None, :] * (hi * s)[None, :, :], 2)  # zero point (or 8) kept
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@jit
def int4_group_of_byte(X, W, S, Z, BIAS, Y, M, N, K, G, sxm, swn, ssn, ssg, szn, szg, sym,
                       HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for j0 in range(0, K // 2, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        j_ok = offs_j < K // 2
        w_mask, x_mask = n_ok[:, None] & j_ok[None, :], m_ok[:, None] & j_ok[None, :]
        packed = tl.load(W + offs_n[:, None] * swn + offs_j[None, :], mask=w_mask, other=0)
        x_lo = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :], mask=x_mask,
                       other=0.0).to(tl.float32)
        x_hi = tl.load(X + offs_m[:, None] * sxm + 2 * offs_j[None, :] + 1, mask=x_mask,
                       other=0.0).to(tl.float32)
        lo = (packed & 0xF).to(tl.float32)
        hi = (packed >> 4).to(tl.float32)
        grp = offs_j // G  # counts bytes, but a group is G codes: G / 2 bytes
        s = tl.load(S + offs_n[:, None] * ssn + grp[None, :] * ssg, mask=w_mask,
                    other=0.0).to(tl.float32)
        z = 8.0
        if HAS_ZERO:
            z = tl.load(Z + offs_n[:, None] * szn + grp[None, :] * szg, mask=w_mask,
                        other=0).to(tl.float32)
        acc += tl.sum(x_lo[:, None, :] * ((lo - z) * s)[None, :, :], 2)
        acc += tl.sum(x_hi[:, None, :] * ((hi - z) * s)[None, :, :], 2)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs_m[:, None] * sym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])
