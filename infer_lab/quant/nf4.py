"""NF4: QLoRA's 4-bit NormalFloat, with optional double quantization.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs". Pretrained
weights are roughly zero-mean normal, so a 4-bit code should spend its 16 levels where
the probability mass is: NF4's levels are quantiles of N(0, 1), rescaled to [-1, 1],
with an exact zero and asymmetric halves (8 positive levels, 7 negative, plus 0):

    q_i = (Q(delta_i) + Q(delta_{i+1})) / 2,   Q = inverse normal CDF

Each block of ``blocksize`` (64) consecutive weights of a row shares one absmax c:

    code  = argmin_i |w / c - q_i|           (nearest level: 4 bits)
    w_hat = q_code * c

Storage is 4 bits + 32/64 bits of fp32 absmax = 4.5 bits per weight. Double
quantization (QLoRA section 3) quantizes the absmax values themselves: subtract their
mean, then 8-bit codes with one fp32 scale per 256 absmax values, which costs
4 + 8/64 + 32/(64*256) ~ 4.127 bits per weight.

Simplification: QLoRA/bitsandbytes store the second-level codes with an 8-bit
*dynamic* (float-like) map; here they are plain symmetric int8, which is easier to read
and just as accurate for the narrow range absmax values have. The first level is
bit-identical to bitsandbytes (same levels, same midpoint rounding, same blocking);
only the packing differs: bitsandbytes puts the even element in the *high* nibble,
:func:`~infer_lab.quant.primitives.pack_int4` in the low one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infer_lab.quant.primitives import check_weight, pack_int4, unpack_int4

# The 16 NF4 levels exactly as QLoRA/bitsandbytes ship them (create_normal_map(0.9677)).
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_code() -> torch.Tensor:
    """The NF4 codebook as a fresh fp32 tensor (16,), sorted ascending."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32)


@dataclass(frozen=True)
class NF4Tensor:
    """A weight (rows, cols) in NF4: packed codes plus one (possibly quantized) absmax
    per block of ``blocksize`` weights along each row."""

    packed: torch.Tensor  # (rows, cols // 2) uint8, two codes per byte
    absmax: torch.Tensor | None  # (rows, cols // blocksize) fp32; None when double-quantized
    shape: torch.Size
    blocksize: int = 64
    # double quantization: absmax ~ absmax_q * absmax_scale[group] + absmax_offset
    absmax_q: torch.Tensor | None = None  # (n_blocks,) int8
    absmax_scale: torch.Tensor | None = None  # (ceil(n_blocks / dq_blocksize),) fp32
    absmax_offset: torch.Tensor | None = None  # () fp32
    dq_blocksize: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_q is not None

    def nbytes(self) -> int:
        """Bytes actually stored (codes + absmax or its quantized form)."""
        parts = [self.packed, self.absmax, self.absmax_q, self.absmax_scale,
                 self.absmax_offset]
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes() / self.shape.numel()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self, dtype)


def _blocked(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"NF4 quantizes 2-d weights (out, in), got shape {tuple(w.shape)}")
    if blocksize <= 0 or blocksize % 2:
        raise ValueError(f"blocksize must be a positive even number, got {blocksize}")
    rows, cols = w.shape
    if cols % blocksize:
        raise ValueError(f"blocksize {blocksize} does not divide the last dimension "
                         f"{cols}; pick a divisor (no padding is done)")
    return w.reshape(rows, cols // blocksize, blocksize)  # (rows, G, bs)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False,
                 dq_blocksize: int = 256) -> NF4Tensor:
    """Blockwise absmax scaling, then nearest NF4 level; see the module docstring."""
    check_weight(w)
    g = _blocked(w.detach().float(), blocksize)  # (rows, G, bs)
    absmax = g.abs().amax(dim=-1)  # (rows, G)
    # Multiply by the reciprocal, as bitsandbytes does, so the codes match it bit for bit;
    # the tiny floor keeps an all-zero block at code 7 (the exact 0) instead of NaN.
    scaled = (g * (1.0 / absmax.clamp(min=1e-38))[..., None]).clamp(-1, 1)
    code = nf4_code()
    # Nearest level = count of midpoints below: bucketize on the 15 midpoints.
    mid = (code[:-1] + code[1:]) / 2  # (15,)
    q = torch.bucketize(scaled, mid).to(torch.uint8)  # (rows, G, bs) in 0..15
    packed = pack_int4(q.reshape(w.shape))  # (rows, cols/2)
    if not double_quant:
        return NF4Tensor(packed, absmax, w.shape, blocksize)
    flat = absmax.reshape(-1)  # (n_blocks,)
    offset = flat.mean()
    # Absmax values are all positive and similar: centring them first roughly halves
    # the range the 8-bit codes have to cover.
    centred = flat - offset
    n = flat.numel()
    n_groups = -(-n // dq_blocksize)
    padded = F.pad(centred, (0, n_groups * dq_blocksize - n))  # (n_groups * dqbs,)
    amax2 = padded.reshape(n_groups, dq_blocksize).abs().amax(dim=-1)  # (n_groups,)
    scale2 = torch.where(amax2 > 0, amax2 / 127, torch.ones_like(amax2))
    q2 = torch.round(padded.reshape(n_groups, -1) / scale2[:, None]).clamp(-127, 127)
    q2 = q2.reshape(-1)[:n].to(torch.int8)  # (n_blocks,)
    return NF4Tensor(packed, None, w.shape, blocksize, q2, scale2, offset, dq_blocksize)


def nf4_absmax(t: NF4Tensor) -> torch.Tensor:
    """The per-block absmax (rows, G), undoing double quantization if it was used."""
    rows, cols = t.shape
    if not t.double_quant:
        return t.absmax
    scale = t.absmax_scale.repeat_interleave(t.dq_blocksize)[: t.absmax_q.numel()]
    flat = t.absmax_q.float() * scale + t.absmax_offset  # (n_blocks,)
    return flat.reshape(rows, cols // t.blocksize)


def dequantize_nf4(t: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_hat = level[code] * absmax, block by block."""
    rows, cols = t.shape
    q = unpack_int4(t.packed).long()  # (rows, cols)
    vals = nf4_code()[q].reshape(rows, cols // t.blocksize, t.blocksize)  # (rows, G, bs)
    return (vals * nf4_absmax(t)[..., None]).reshape(t.shape).to(dtype)


def nf4_bits_per_weight(blocksize: int = 64, double_quant: bool = False,
                        dq_blocksize: int = 256) -> float:
    """Asymptotic cost (the per-tensor offset of double quantization left out)."""
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)


class NF4Linear(nn.Module):
    """A linear layer that stores its weight in NF4 and dequantizes it on every forward.

    Dequantize-then-matmul is the reference path: it shows the memory saving (weights
    move as 4-bit codes) but not the speed of a fused kernel.
    """

    def __init__(self, t: NF4Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = t.shape
        self.blocksize, self.dq_blocksize = t.blocksize, t.dq_blocksize
        self.register_buffer("packed", t.packed)
        self.register_buffer("absmax", t.absmax)
        self.register_buffer("absmax_q", t.absmax_q)
        self.register_buffer("absmax_scale", t.absmax_scale)
        self.register_buffer("absmax_offset", t.absmax_offset)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64,
                    double_quant: bool = False) -> NF4Linear:
        return cls(quantize_nf4(linear.weight, blocksize, double_quant), linear.bias)

    def nf4(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax,
                         torch.Size((self.out_features, self.in_features)),
                         self.blocksize, self.absmax_q, self.absmax_scale,
                         self.absmax_offset, self.dq_blocksize)

    @property
    def bits_per_weight(self) -> float:
        return self.nf4().bits_per_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_nf4(self.nf4(), x.dtype)  # (out, in)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocksize={self.blocksize}, double_quant={self.absmax_q is not None}")
