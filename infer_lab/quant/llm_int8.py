"""LLM.int8(): vector-wise int8 matmul with mixed-precision outlier decomposition
(Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale").

Large models develop a few *outlier feature dimensions*: input columns h of X whose
magnitude reaches |x| >= 6 while the rest stay near 1. One absmax scale per token row
would then be set by the outlier and crush every other value to a few int8 levels. The
fix splits the matmul by columns:

    O = {h : max_t |X[t, h]| >= threshold}
    Y = (X[:, ~O] W[:, ~O]^T)  in int8, scales c_x (per token) and c_w (per output row)
      +  X[:, O] W[:, O]^T       in floating point (a handful of columns)

The int8 part: Xq = round(127 X / c_x), Wq = round(127 W / c_w), Y ~ (Xq Wq^T) c_x c_w^T / 127^2,
accumulated exactly in int32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..surgery import DEFAULT_SKIP, linears, set_module
from .apply import is_quantized
from .primitives import check_weight

THRESHOLD = 6.0


def absmax_int8(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and the absmax along ``dim`` (kept as a size-1 dim): x ~ q * c / 127."""
    c = x.abs().amax(dim=dim, keepdim=True).clamp(min=1e-8)
    return torch.round(x * (127.0 / c)).to(torch.int8), c


def outlier_columns(x: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Boolean mask (in_features,) of input dimensions where any token reaches |x| >= t."""
    return (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=0)


def int8_matmul_decomposed(x: torch.Tensor, wq: torch.Tensor, cw: torch.Tensor,
                           threshold: float = THRESHOLD) -> torch.Tensor:
    """x (..., in) times W^T with W given as int8 rows ``wq`` (out, in) and absmax ``cw``
    (out, 1). Outlier columns of x go through a floating-point matmul."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()  # (N, in)
    outliers = outlier_columns(x2, threshold)  # (in,)
    w_deq = None
    y = torch.zeros(x2.shape[0], wq.shape[0], dtype=torch.float32, device=x.device)
    if outliers.any():
        w_deq = wq[:, outliers].float() * (cw / 127.0)  # (out, n_outliers)
        y += x2[:, outliers] @ w_deq.T
        x2 = x2.masked_fill(outliers, 0.0)  # those columns are done
    xq, cx = absmax_int8(x2, dim=1)  # (N, in), (N, 1): one scale per token (row)
    acc = torch.matmul(xq.to(torch.int32), wq.to(torch.int32).T)  # (N, out), exact
    y += acc.float() * (cx * cw.T) / (127.0 * 127.0)
    return y.to(x.dtype).reshape(*shape[:-1], wq.shape[0])


class LLMInt8Linear(nn.Module):
    """nn.Linear replacement: int8 weight rows + mixed-precision outlier columns."""

    is_quantized = True
    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 threshold: float = THRESHOLD):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, threshold
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("absmax", torch.ones(out_features, 1, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.last_outliers = 0  # outlier columns seen in the latest forward (for the lab)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = THRESHOLD) -> "LLMInt8Linear":
        check_weight(linear.weight)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, threshold)
        w = linear.weight.detach().float()
        cw = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8).half()  # stored fp16 ...
        m.absmax.copy_(cw)
        m.qweight.copy_(torch.round(w * (127.0 / cw.float())).clamp(-127, 127).to(torch.int8))
        if linear.bias is not None:  # ... and the codes are made against that fp16 value
            m.bias.data.copy_(linear.bias.detach())
        return m.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * (self.absmax.float() / 127.0)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_outliers = int(outlier_columns(x.detach(), self.threshold).sum())
        y = int8_matmul_decomposed(x, self.qweight, self.absmax.float(), self.threshold)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold}"


@torch.no_grad()
def activation_outliers(model: nn.Module, idx: torch.Tensor,
                        threshold: float = THRESHOLD) -> dict[str, dict[str, float]]:
    """For every nn.Linear: how many input dimensions reach |x| >= threshold on ``idx``,
    and the largest |x| seen. Shows where LLM.int8()'s decomposition would kick in."""
    stats: dict[str, dict[str, float]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(m, inp, out, name=name):
                x = inp[0].detach()
                stats[name] = {"outlier_dims": int(outlier_columns(x, threshold).sum()),
                               "max_abs": float(x.abs().max()),
                               "in_features": x.shape[-1]}
            hooks.append(mod.register_forward_hook(hook))
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return stats


def llm_int8_model(model: nn.Module, threshold: float = THRESHOLD,
                   skip: tuple[str, ...] = DEFAULT_SKIP) -> nn.Module:
    """Swap every nn.Linear for LLMInt8Linear, in place, but ``skip`` (globs) and tied
    weights: :func:`infer_lab.surgery.linears`' rule."""
    if is_quantized(model):
        raise ValueError("model is already quantized: quantize the original weights instead")
    targets = linears(model, skip)
    new = {n: LLMInt8Linear.from_linear(m, threshold) for n, m in targets.items()}  # all or none
    for name, q in new.items():
        set_module(model, name, q)
    return model


__all__ = ["THRESHOLD", "LLMInt8Linear", "activation_outliers", "absmax_int8",
           "int8_matmul_decomposed", "llm_int8_model", "outlier_columns"]
