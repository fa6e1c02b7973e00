"""GGUF-style block formats Q8_0 and Q4_K, byte for byte, and a Q4_K_M-style mix.

llama.cpp (ggml-quants.c, ggml-common.h) stores a weight row as a run of fixed-size
blocks; each block carries its own scales, so a row is self-describing bytes.

Q8_0: 32 weights per block, one fp16 scale d = max|x| / 127, q = round(x / d), where
round is C's ``roundf`` (halves away from zero, not to even):

    block_q8_0 = { fp16 d; int8 qs[32]; }                 34 bytes / 32 = 8.5 bits

Q4_K: 256-weight super-blocks of 8 sub-blocks of 32. Each sub-block j has an affine
grid x ~ d * sc_j * q - dmin * m_j (q in 0..15), whose 6-bit scale sc_j and 6-bit min
m_j are themselves quantized against the super-block's fp16 d and dmin:

    block_q4_K = { fp16 d; fp16 dmin; uint8 scales[12]; uint8 qs[128]; }
                                                          144 bytes / 256 = 4.5 bits

scales[12] packs 8 six-bit scales and 8 six-bit mins (96 bits): bytes 0..3 hold sc_0..3
(low 6 bits) and bytes 4..7 m_0..3; sub-blocks 4..7 put their low 4 bits in bytes
8..11 (scale low nibble, min high nibble) and their top 2 bits in the spare top bits of
bytes 0..7. qs holds 64 weights per 32 bytes: byte l of chunk c has weight l of
sub-block 2c in its low nibble and weight l of sub-block 2c + 1 in its high nibble.

Simplification: llama.cpp picks each sub-block's (scale, min) by a small iterative
search (make_qkx2_quants); here they are the plain min/max fit, which gives the same
format and slightly larger error. Codes are then rounded against the *stored* scales,
so decoding needs nothing but the bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer_lab.quant.primitives import check_weight, pack_int4, unpack_int4
from infer_lab.surgery import block_index

Q8_0_BLOCK, Q8_0_BYTES = 32, 34
QK_K, Q4_K_SUB, Q4_K_BYTES = 256, 32, 144


def _rows_of_blocks(w: torch.Tensor, block: int, name: str) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"{name} quantizes 2-d weights (out, in), got {tuple(w.shape)}")
    check_weight(w)
    if w.shape[1] % block:
        raise ValueError(f"{name} needs the last dimension to be a multiple of {block}, "
                         f"got {w.shape[1]} (llama.cpp does not pad either)")
    return w.detach().float().reshape(w.shape[0], -1, block)  # (rows, n_blocks, block)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """(...,) fp32 -> (..., 2) uint8, little-endian fp16 as in the GGUF file."""
    if x.numel() and float(x.max()) > torch.finfo(torch.float16).max:
        raise ValueError("a block scale overflows fp16: weights this large do not fit "
                         "a GGUF block format")
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(*x.shape, 2)


def _fp16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) uint8 -> (...,) fp32."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


# -- Q8_0 ---------------------------------------------------------------------------------
def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``roundf``: to nearest, halves away from zero (torch.round sends them to even).

    Written as floor(|x|) + [frac >= 0.5], not floor(|x| + 0.5): the sum rounds in
    float32, so 0.49999997 + 0.5 becomes 1.0 and would round up.
    """
    a = x.abs()
    f = a.floor()
    return torch.copysign(f + (a - f >= 0.5).to(x.dtype), x)  # a - f is exact


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """(rows, cols) float -> (rows, cols / 32, 34) uint8 blocks, llama.cpp's bytes.

    As ``quantize_row_q8_0_ref``: d = amax / 127 in fp32, codes roundf(x * (1 / d)) with
    that fp32 d, then d stored as fp16. One deliberate difference: a block whose d
    flushes to zero in fp16 (max|x| < ~4e-6) stores zero codes where llama.cpp keeps
    the fp32 codes. Both decode to exact zeros; zero codes keep the bytes canonical
    (quantizing the decoded block gives the same bytes back).
    """
    g = _rows_of_blocks(w, Q8_0_BLOCK, "Q8_0")  # (rows, nb, 32)
    d = g.abs().amax(dim=-1) / 127  # (rows, nb)
    inv = torch.where(d.half() > 0, 1 / d, torch.zeros_like(d))
    q = round_half_away(g * inv[..., None]).clamp(-127, 127).to(torch.int8)  # (rows, nb, 32)
    return torch.cat([_fp16_bytes(d), q.view(torch.uint8)], dim=-1)  # (rows, nb, 34)


def dequantize_q8_0(blocks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(rows, nb, 34) uint8 -> (rows, nb * 32): x = d * q."""
    d = _fp16_from_bytes(blocks[..., :2])  # (rows, nb)
    q = blocks[..., 2:].contiguous().view(torch.int8).float()  # (rows, nb, 32)
    return (q * d[..., None]).reshape(blocks.shape[0], -1).to(dtype)


# -- Q4_K ---------------------------------------------------------------------------------
def pack_scales_mins(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins (..., 8) uint8 -> (..., 12) uint8, llama.cpp layout."""
    out = torch.zeros(*sc.shape[:-1], 12, dtype=torch.uint8)
    out[..., 0:4] = sc[..., 0:4] | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = m[..., 0:4] | ((m[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0xF) | ((m[..., 4:8] & 0xF) << 4)
    return out


def unpack_scales_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_scales_mins` (llama.cpp's get_scale_min_k4)."""
    sc_lo, m_lo = s[..., 0:4] & 63, s[..., 4:8] & 63
    sc_hi = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    m_hi = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return torch.cat([sc_lo, sc_hi], -1), torch.cat([m_lo, m_hi], -1)  # (..., 8) each


def _pack_q4_k_codes(q: torch.Tensor) -> torch.Tensor:
    """(..., 256) codes -> (..., 128) bytes: sub-blocks 2c and 2c+1 share 32 bytes."""
    pairs = q.reshape(*q.shape[:-1], 4, 2, 32)  # (..., chunk, lo/hi sub-block, 32)
    # pack_int4 puts even positions low: interleave so (lo_l, hi_l) are adjacent.
    return pack_int4(pairs.transpose(-1, -2).reshape(*q.shape[:-1], 4, 64)).flatten(-2)


def _unpack_q4_k_codes(qs: torch.Tensor) -> torch.Tensor:
    """(..., 128) bytes -> (..., 256) codes in weight order."""
    pairs = unpack_int4(qs.reshape(*qs.shape[:-1], 4, 32)).reshape(*qs.shape[:-1], 4, 32, 2)
    return pairs.transpose(-1, -2).reshape(*qs.shape[:-1], 256)


def quantize_q4_k(w: torch.Tensor) -> torch.Tensor:
    """(rows, cols) float -> (rows, cols / 256, 144) uint8 super-blocks."""
    g = _rows_of_blocks(w, QK_K, "Q4_K").reshape(w.shape[0], -1, 8, Q4_K_SUB)
    # g: (rows, nb, 8, 32). Each sub-block's affine fit; keep 0 in range as llama.cpp does.
    lo = g.amin(dim=-1).clamp(max=0)  # (rows, nb, 8)
    hi = g.amax(dim=-1)
    scale, mins = (hi - lo).clamp(min=0) / 15, -lo  # both >= 0
    d = (scale.amax(dim=-1) / 63).half().float()  # (rows, nb) as stored
    dmin = (mins.amax(dim=-1) / 63).half().float()

    def six_bit(v: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        safe = torch.where(step > 0, step, torch.ones_like(step))
        return torch.round(v / safe[..., None]).clamp(0, 63).to(torch.uint8)

    sc, m = six_bit(scale, d), six_bit(mins, dmin)  # (rows, nb, 8)
    s_eff = d[..., None] * sc.float()  # (rows, nb, 8) the scales the decoder will use
    m_eff = dmin[..., None] * m.float()
    safe = torch.where(s_eff > 0, s_eff, torch.ones_like(s_eff))
    q = torch.round((g + m_eff[..., None]) / safe[..., None]).clamp(0, 15)  # (.., 8, 32)
    q = q.to(torch.uint8).flatten(-2)  # (rows, nb, 256)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(dmin), pack_scales_mins(sc, m),
                      _pack_q4_k_codes(q)], dim=-1)  # (rows, nb, 144)


def dequantize_q4_k(blocks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(rows, nb, 144) uint8 -> (rows, nb * 256): x = d * sc_j * q - dmin * m_j."""
    d = _fp16_from_bytes(blocks[..., 0:2])  # (rows, nb)
    dmin = _fp16_from_bytes(blocks[..., 2:4])
    sc, m = unpack_scales_mins(blocks[..., 4:16])  # (rows, nb, 8)
    q = _unpack_q4_k_codes(blocks[..., 16:]).float()  # (rows, nb, 256)
    q = q.reshape(*q.shape[:-1], 8, Q4_K_SUB)  # (rows, nb, 8, 32)
    x = (d[..., None] * sc.float())[..., None] * q - (dmin[..., None] * m.float())[..., None]
    return x.reshape(blocks.shape[0], -1).to(dtype)


# -- sizes and modules -------------------------------------------------------------------
FORMATS = {  # name -> (quantize, dequantize, weights per block, bytes per block)
    "q8_0": (quantize_q8_0, dequantize_q8_0, Q8_0_BLOCK, Q8_0_BYTES),
    "q4_k": (quantize_q4_k, dequantize_q4_k, QK_K, Q4_K_BYTES),
}


def bits_per_weight(blocks: torch.Tensor, n_weights: int) -> float:
    """Counted from the bytes actually stored: 8.5 for Q8_0, 4.5 for Q4_K."""
    return 8 * blocks.numel() * blocks.element_size() / n_weights


class _BlockLinear(nn.Module):
    fmt: str

    def __init__(self, blocks: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        per_block = FORMATS[self.fmt][2]
        self.out_features, self.in_features = blocks.shape[0], blocks.shape[1] * per_block
        self.register_buffer("blocks", blocks)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        return cls(FORMATS[cls.fmt][0](linear.weight), linear.bias)

    @property
    def bits_per_weight(self) -> float:
        return bits_per_weight(self.blocks, self.out_features * self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = FORMATS[self.fmt][1](self.blocks, x.dtype)  # (out, in)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Q8_0Linear(_BlockLinear):
    """Linear layer storing GGUF Q8_0 blocks; forward = dequantize, then matmul."""
    fmt = "q8_0"


class Q4KLinear(_BlockLinear):
    """Linear layer storing GGUF Q4_K super-blocks; forward = dequantize, then matmul."""
    fmt = "q4_k"


# -- Q4_K_M-style mixed assignment --------------------------------------------------------
def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's rule: the first and last eighth of the layers, and every third one
    between them, are the ones most sensitive to quantization."""
    return (layer < n_layers // 8 or layer >= 7 * n_layers // 8
            or (layer - n_layers // 8) % 3 == 2)


def q4_k_m_assignment(names: list[str], n_layers: int,
                      sensitive: tuple[str, ...] = ("wqkv", "w2"),
                      always_high: tuple[str, ...] = ("lm_head",),
                      high: str = "q8_0", low: str = "q4_k") -> dict[str, str]:
    """Which format each linear layer gets, in the spirit of llama.cpp's Q4_K_M.

    Q4_K_M keeps attn_v and ffn_down at Q6_K in the layers chosen by
    :func:`use_more_bits` and the output head at Q6_K; the rest are Q4_K. Here the
    higher format is Q8_0 (this package has no Q6_K), and since our attention fuses
    q, k and v into ``wqkv`` the whole fused projection is promoted. ``sensitive`` and
    ``always_high`` are the last components of module names (``layers.3.mlp.w2`` ->
    ``w2``); the layer index comes from the ``layers.<i>.`` component
    (:func:`infer_lab.surgery.block_index`).
    """
    out = {}
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        layer = block_index(name)
        promote = leaf in always_high or (
            leaf in sensitive and layer is not None and use_more_bits(layer, n_layers))
        out[name] = high if promote else low
    return out
