"""GPTQ: one-shot weight quantization with second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers". Round-to-nearest (RTN) rounds every weight on
its own; GPTQ rounds the columns of W (out, in) one at a time and pushes each rounding
error onto the columns not yet rounded, so that the layer *output* on calibration
inputs X (N, in) stays close:   min_Q || X W^T - X Q^T ||^2,   H = 2 X^T X / N.

Rounding column j with error e_j = (w_j - q_j) / [H^-1]_jj, the optimal update of the
remaining columns k > j is (Optimal Brain Surgeon, Hassibi & Stork 1993):

    W[:, k] -= e_j * [H^-1]_jk

GPTQ's tricks, all here: (1) a fixed column order for every row, so H^-1 is shared;
(2) the rows of H^-1 it needs are those of the upper Cholesky factor of H^-1, computed
once (numerically stable, with damping lambda = damp * mean(diag H)); (3) "lazy batches":
updates inside a block of ``block_size`` columns are applied at once to the rest of W,
one matmul instead of many rank-1 updates. Group scales are fixed when the first column
of a group is reached, from the weights as updated so far (the reference code's choice).
Not done: act-order (quantizing columns by decreasing diag H).

Calibration runs layer by layer ("sequential"): block i's inputs are collected with
blocks 0..i-1 already quantized, so later layers learn to compensate earlier errors.
:mod:`.calibrate` has the calibration data and the block-by-block walk (shared with AWQ).
"""

from __future__ import annotations

import torch
from torch import nn

from .calibrate import quantize_blockwise
from .int4 import SYMMETRIC_OFFSET, Int4Linear
from .primitives import check_bits, check_finite, check_weight, pack_int4, quantize


# -- the GPTQ algorithm -----------------------------------------------------------------
def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / N for inputs x (N, in): the curvature of the output MSE in W."""
    x = x.double()
    return 2 * x.T @ x / x.shape[0]  # (in, in)


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + lambda I)^-1, raising lambda until it exists."""
    lam = damp * H.diagonal().mean()
    eye = torch.eye(len(H), dtype=H.dtype)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)  # (in, in)
            return torch.linalg.cholesky(Hinv, upper=True)  # (in, in)
        lam = lam * 10 if lam > 0 else 1e-6  # ill-conditioned: damp harder
    raise ValueError("Hessian is not positive definite even with strong damping")


def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, bits: int = 4,
                         group_size: int | None = 64, block_size: int = 128,
                         damp: float = 0.01, symmetric: bool = True,
                         scale_dtype: torch.dtype = torch.float16,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """GPTQ-quantize W (out, in) given H (in, in); returns (codes, scales, zeros, W_deq).

    codes: (out, in) int8 (symmetric) or uint8; scales, zeros: (out, n_groups), scales
    already rounded to ``scale_dtype`` (fp32 tensor), zeros None when symmetric;
    W_deq = scales * (codes - zeros) per group, exactly. group_size None: one scale per row.
    """
    check_bits(bits)
    check_weight(W)
    check_finite(H, "Hessian")
    rows, cols = W.shape
    gs = cols if group_size is None else group_size
    if not isinstance(gs, int) or gs <= 0 or cols % gs:
        raise ValueError(f"group_size {group_size!r} must be a positive divisor of "
                         f"in_features {cols}")
    # One group per row (gs == cols) starts at column 0: any block size is fine then.
    if block_size <= 0 or (block_size % gs and gs % block_size and gs != cols):
        raise ValueError(f"block_size {block_size} and group_size {gs} must divide "
                         "one another, so a group never straddles a lazy batch")
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {tuple(H.shape)}")
    W = W.detach().double().clone()  # (out, in), updated in place as columns are rounded
    H = H.double().clone()
    dead = H.diagonal() == 0  # input channel never active: weight is irrelevant
    H[dead, dead] = 1
    W[:, dead] = 0
    U = _inverse_cholesky(H, damp)  # (in, in) upper; row j holds [H^-1]_jk / sqrt(..)
    qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    codes = torch.zeros(rows, cols, dtype=torch.float64)
    scales = torch.zeros(rows, cols // gs, dtype=torch.float64)
    zeros = torch.zeros(rows, cols // gs, dtype=torch.float64)
    for b1 in range(0, cols, block_size):
        b2 = min(b1 + block_size, cols)
        W1 = W[:, b1:b2]  # (out, B): a view, so in-block updates land in W
        Err = torch.zeros_like(W1)  # (out, B)
        U1 = U[b1:b2, b1:b2]  # (B, B)
        for i in range(b2 - b1):
            j = b1 + i
            if j % gs == 0:  # entering a group: fix its scale from the current weights
                g = j // gs
                qt = quantize(W[:, j:j + gs].float(), bits, "channel", None, symmetric,
                              scale_dtype)
                scales[:, g] = qt.scale[:, 0].double()
                zeros[:, g] = 0 if symmetric else qt.zero[:, 0].double()
            s, z = scales[:, j // gs], zeros[:, j // gs]  # (out,)
            q = (torch.round(W1[:, i] / s) + z).clamp(qmin, qmax)  # (out,)
            codes[:, j] = q
            err = (W1[:, i] - s * (q - z)) / U1[i, i]  # (out,)
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]  # OBS update inside the block
            Err[:, i] = err
        W[:, b2:] -= Err @ U[b1:b2, b2:]  # lazy batch: the whole block's updates at once
    codes_t = codes.to(torch.int8 if symmetric else torch.uint8)
    z_t = None if symmetric else zeros.to(torch.uint8)
    W_deq = (codes.view(rows, -1, gs) - zeros[..., None]) * scales[..., None]  # (out, G, gs)
    return codes_t, scales.float(), z_t, W_deq.reshape(rows, cols).float()


# -- building the module ----------------------------------------------------------------
def int4_from_codes(linear: nn.Linear, codes: torch.Tensor, scales: torch.Tensor,
                    zeros: torch.Tensor | None, group_size: int | None,
                    scale_dtype: torch.dtype = torch.float16) -> Int4Linear:
    """An Int4Linear holding given codes (out, in) and scales (out, n_groups).

    The scales must already be representable in ``scale_dtype`` (GPTQ's are), or the
    stored module would not dequantize to the weight its codes were chosen for.
    """
    granularity = "group" if group_size is not None and group_size < linear.in_features \
        else "channel"
    m = Int4Linear(linear.in_features, linear.out_features, linear.bias is not None,
                   granularity, group_size if granularity == "group" else None,
                   zeros is None, scale_dtype)
    nib = codes.to(torch.int16) + SYMMETRIC_OFFSET if zeros is None else codes
    m.qweight.copy_(pack_int4(nib.to(torch.uint8)))  # (out, in/2)
    m.scale.copy_(scales.to(scale_dtype))
    if zeros is not None:
        m.zero.copy_(zeros)
    if linear.bias is not None:
        m.bias = nn.Parameter(linear.bias.detach().clone())
    return m.to(linear.weight.device)


def gptq_quantize_model(model: nn.Module, calib_ids: torch.Tensor, bits: int = 4,
                        group_size: int | None = 64, block_size: int = 128,
                        damp: float = 0.01, symmetric: bool = True) -> nn.Module:
    """Replace the model's linear layers (not the tied lm_head) by GPTQ Int4Linear, in place."""
    if bits != 4:
        raise ValueError(f"the model path stores int4 (Int4Linear); got bits={bits}. "
                         "gptq_quantize_weight handles 2..8 bits")

    def make(name: str, linear: nn.Linear, x: torch.Tensor) -> nn.Module:
        try:
            codes, s, z, _ = gptq_quantize_weight(linear.weight, hessian(x), bits,
                                                  group_size, block_size, damp, symmetric)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return int4_from_codes(linear, codes, s, z, group_size)

    return quantize_blockwise(model, calib_ids, make, group_size)
