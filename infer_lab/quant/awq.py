"""AWQ: activation-aware weight quantization by per-input-channel scaling.

Lin, Tang, Tang, Yang, Dang, Gan, Han 2023, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration". A few input channels carry much larger
activations than the rest, so the weights that multiply them matter most. Scaling such a
column up before rounding shrinks its *relative* rounding error, and dividing the input
by the same factor keeps the product unchanged:

    y = W x = (W diag(s)) (diag(s)^-1 x)  ~  Q(W diag(s)) (diag(s)^-1 x)

The scales come from activation statistics with one searched exponent:

    s = mean_n |x_n|^alpha   (normalised so sqrt(max s * min s) = 1),
    alpha* = argmin_{alpha in [0, 1)} || X W^T - (X diag(s)^-1) Q(W diag(s))^T ||^2

alpha = 0 is plain round-to-nearest (s = 1), so on the calibration sample AWQ is never
worse than RTN. Q is ordinary group-wise RTN (:func:`.primitives.quantize`): no weight
is updated, unlike GPTQ.

Simplifications, said plainly: each linear layer searches its own s on its own output
(the paper shares s between layers reading the same input, e.g. q/k/v, and measures
the block output); the weight-clipping search (:func:`awq_clip`) is optional and
scores each (row, group) separately; and
diag(s)^-1 stays an explicit per-channel multiply in :class:`AWQLinear` instead of being
folded into the RMSNorm weight or the previous linear layer (same maths, one more
elementwise op; folding is what makes AWQ free at inference time).
"""

from __future__ import annotations

import torch
from torch import nn

from .calibrate import quantize_blockwise
from .int4 import Int4Linear
from .primitives import check_bits, check_weight, quantize


def _check_group(group_size: int | None, cols: int) -> None:
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0
                                   or cols % group_size):
        raise ValueError(f"group_size {group_size!r} must be a positive divisor of "
                         f"in_features {cols}")


def _rtn(W: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    """Group-wise round-to-nearest, dequantized, with fp16 scales as Int4Linear stores."""
    gran = "group" if group_size is not None else "channel"
    return quantize(W, bits, gran, group_size, symmetric, torch.float16).dequantize()


def awq_scales(x_stats: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = x_stats^alpha, normalised to geometric mid-range 1 (keeps W*s well scaled)."""
    s = x_stats.clamp(min=1e-5) ** alpha  # (in,)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def awq_search_scales(W: torch.Tensor, x_stats: torch.Tensor, x_sample: torch.Tensor,
                      bits: int = 4, group_size: int | None = 64, grid: int = 20,
                      symmetric: bool = True) -> torch.Tensor:
    """Per-input-channel scales s (in,) for W (out, in) by grid search over alpha.

    x_stats: mean |x| per input channel (in,); x_sample: inputs (N, in) to score with.
    """
    check_bits(bits)
    check_weight(W)
    _check_group(group_size, W.shape[1])
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    W, x = W.detach().float(), x_sample.float()
    ref = x @ W.T  # (N, out)
    best, best_s = float("inf"), torch.ones(W.shape[1])
    for k in range(grid):
        s = awq_scales(x_stats.float(), k / grid)  # (in,)
        Wq = _rtn(W * s, bits, group_size, symmetric) / s  # (out, in)
        loss = (ref - x @ Wq.T).pow(2).mean().item()
        if loss < best:
            best, best_s = loss, s
    return best_s


@torch.no_grad()
def awq_clip(W: torch.Tensor, x_sample: torch.Tensor, bits: int = 4,
             group_size: int | None = 64, symmetric: bool = True, grid: int = 10,
             min_ratio: float = 0.5) -> torch.Tensor:
    """W (out, in) with each group clamped to +-r * max|w|, r searched per group.

    A smaller range gives finer steps for all the other weights of the group at the cost
    of clipping its largest one; each (row, group) keeps the r whose partial output
    x_g . w_g changes least on ``x_sample`` (N, in) (the reference code's auto-clip).
    """
    out, cols = W.shape
    gs = group_size or cols
    wg = W.float().reshape(out, cols // gs, gs)  # (out, G, gs)
    xg = x_sample.float().reshape(-1, cols // gs, gs)  # (N, G, gs)
    ref = torch.einsum("ngk,ogk->nog", xg, wg)  # (N, out, G) partial outputs per group
    amax = wg.abs().amax(-1, keepdim=True)  # (out, G, 1)
    best_err = torch.full((out, cols // gs), float("inf"))
    best = wg.clone()
    for k in range(grid):
        r = 1 - (1 - min_ratio) * k / max(grid - 1, 1)
        wc = torch.maximum(torch.minimum(wg, r * amax), -r * amax)  # (out, G, gs)
        wq = _rtn(wc.reshape(out, cols), bits, group_size, symmetric).reshape(wg.shape)
        err = (torch.einsum("ngk,ogk->nog", xg, wq) - ref).pow(2).mean(0)  # (out, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], wc, best)
    return best.reshape(out, cols)


class AWQLinear(nn.Module):
    """y = Q(W diag(s)) (x / s): an Int4Linear on the scaled weight, input divided by s."""

    is_quantized = True

    def __init__(self, inner: Int4Linear, scale: torch.Tensor):
        super().__init__()
        self.inner = inner
        # Stored as 1/s so the forward is a multiply; fp32, like a norm weight it would
        # be folded into.
        self.register_buffer("inv_scale", (1 / scale.float()).to(inner.scale.device))

    @property
    def in_features(self) -> int:
        return self.inner.in_features

    @property
    def out_features(self) -> int:
        return self.inner.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: torch.Tensor,
                    group_size: int | None = 64, symmetric: bool = True,
                    clip_sample: torch.Tensor | None = None) -> AWQLinear:
        """clip_sample: inputs (N, in) to search per-group clipping on; None: no clipping."""
        scaled = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
        with torch.no_grad():
            ws = linear.weight.float() * scale.to(linear.weight.device)  # (out, in)
            if clip_sample is not None:  # the scaled layer sees the scaled-down inputs
                ws = awq_clip(ws, clip_sample / scale, 4, group_size, symmetric)
            scaled.weight.copy_(ws)
            if linear.bias is not None:  # the bias is added after the product: unscaled
                scaled.bias.copy_(linear.bias)
        gran = "group" if group_size is not None else "channel"
        return cls(Int4Linear.from_linear(scaled.to(linear.weight.device), gran,
                                          group_size, symmetric), scale)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective weight Q(W diag(s)) diag(s)^-1 (out, in)."""
        return (self.inner.dequantized_weight(torch.float32) * self.inv_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.inv_scale.to(x.dtype))  # (..., out)

    def extra_repr(self) -> str:
        return "activation-aware scales on the input"


def awq_quantize_model(model: nn.Module, calib_ids: torch.Tensor, bits: int = 4,
                       group_size: int | None = 64, grid: int = 20,
                       n_sample: int = 4096, symmetric: bool = True,
                       clip: bool = False, seed: int = 0) -> nn.Module:
    """Replace the linear layers (not the tied lm_head) by AWQLinear, in place.

    Statistics use every calibration token; the alpha search scores a random sample of
    ``n_sample`` token inputs per layer (the search costs grid * sample matmuls).
    clip: also run :func:`awq_clip` (off by default: on code-m int4 g64 it cost 6x the
    time and moved held-out perplexity from 10.101 to 10.108, i.e. no gain).
    """
    if bits != 4:
        raise ValueError(f"the model path stores int4 (Int4Linear); got bits={bits}. "
                         "awq_search_scales handles 2..8 bits")
    gen = torch.Generator().manual_seed(seed)

    def make(name: str, linear: nn.Linear, x: torch.Tensor) -> nn.Module:
        try:
            sample = x[torch.randperm(len(x), generator=gen)[:n_sample]]  # (n, in)
            s = awq_search_scales(linear.weight, x.abs().mean(0), sample, bits,
                                  group_size, grid, symmetric)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        clip_x = sample[:512] if clip else None  # (n, in); the clip search is per group
        return AWQLinear.from_linear(linear, s, group_size, symmetric, clip_x)

    return quantize_blockwise(model, calib_ids, make, group_size)
