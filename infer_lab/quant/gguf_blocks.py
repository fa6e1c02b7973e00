"""Decoding the block types of GGUF files: Q4_0, Q4_1, Q5_0, Q5_K, Q6_K (and F16/F32).

llama.cpp stores each row of a weight as fixed-size blocks that carry their own scales
(ggml-common.h). Q8_0 and Q4_K, which we also *write*, are in :mod:`.blocks`; the types
here are the others a GGUF file of a real model uses, decoded to floats so that a file
loads into our :class:`~infer_lab.model.Transformer`. Per block (``d``, ``m``, ``dmin``
are fp16; ``q`` are unsigned codes):

    Q4_0  { d; qs[16] }                     32 weights  x = d * (q - 8)          4.5 bits
    Q4_1  { d; m; qs[16] }                  32 weights  x = d * q + m            5.0 bits
    Q5_0  { d; qh[4]; qs[16] }              32 weights  x = d * (q - 16)         5.5 bits
    Q5_K  { d; dmin; scales[12]; qh[32]; qs[128] }
                                           256 weights  x = d sc_j q - dmin m_j  5.5 bits
    Q6_K  { ql[128]; qh[64]; int8 scales[16]; d }
                                           256 weights  x = d * s_j * (q - 32)   6.5625 bits

Nibbles: in the 32-weight types, byte l holds weight l in its low nibble and weight
l + 16 in its high nibble. A fifth bit (Q5) comes from the bits of ``qh``; Q6_K's two
high bits from ``qh``, four weights per byte. Checked against the ``gguf`` package's
decoders in tests/test_quant_gguf_blocks.py.
"""

from __future__ import annotations

import torch

from .blocks import (Q4_K_BYTES, QK_K, Q8_0_BYTES, _fp16_from_bytes, _unpack_q4_k_codes,
                     dequantize_q4_k, dequantize_q8_0, unpack_scales_mins)

# type name -> (weights per block, bytes per block)
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
    "Q8_0": (32, Q8_0_BYTES), "Q4_K": (QK_K, Q4_K_BYTES), "Q5_K": (QK_K, 176),
    "Q6_K": (QK_K, 210),
}


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(..., 16) bytes -> (..., 32) codes: low nibbles are weights 0..15, high 16..31."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _bits(b: torch.Tensor, n: int) -> torch.Tensor:
    """(..., k) bytes -> (..., 8k) bits, little-endian: bit i of byte j is bit 8j + i."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((b[..., None] >> shifts) & 1).reshape(*b.shape[:-1], -1)[..., :n]


def dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """(rows, nb, 18) -> (rows, nb * 32)."""
    d = _fp16_from_bytes(blocks[..., :2])  # (rows, nb)
    q = _nibbles(blocks[..., 2:]).float() - 8  # (rows, nb, 32)
    return (d[..., None] * q).flatten(1)


def dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """(rows, nb, 20) -> (rows, nb * 32)."""
    d, m = _fp16_from_bytes(blocks[..., :2]), _fp16_from_bytes(blocks[..., 2:4])
    q = _nibbles(blocks[..., 4:]).float()  # (rows, nb, 32)
    return (d[..., None] * q + m[..., None]).flatten(1)


def dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """(rows, nb, 22) -> (rows, nb * 32): bit j of the 32-bit qh is weight j's fifth bit."""
    d = _fp16_from_bytes(blocks[..., :2])
    high = _bits(blocks[..., 2:6], 32)  # (rows, nb, 32)
    q = (_nibbles(blocks[..., 6:]) | (high << 4)).float() - 16
    return (d[..., None] * q).flatten(1)


def dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """(rows, nb, 176) -> (rows, nb * 256): Q4_K's layout plus a fifth bit per weight.

    Weight 32 s + l (sub-block s, 0..7) takes bit s of qh[l] as its fifth bit.
    """
    d, dmin = _fp16_from_bytes(blocks[..., 0:2]), _fp16_from_bytes(blocks[..., 2:4])
    sc, m = unpack_scales_mins(blocks[..., 4:16])  # (rows, nb, 8)
    low = _unpack_q4_k_codes(blocks[..., 48:]).reshape(*blocks.shape[:-1], 8, 32)
    qh = blocks[..., 16:48]  # (rows, nb, 32)
    high = (qh[..., None, :] >> torch.arange(8, dtype=torch.uint8)[:, None]) & 1  # (.., 8, 32)
    q = (low | (high << 4)).float()  # (rows, nb, 8, 32)
    x = (d[..., None] * sc.float())[..., None] * q - (dmin[..., None] * m.float())[..., None]
    return x.flatten(1)


def dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """(rows, nb, 210) -> (rows, nb * 256), 16 weights per int8 scale.

    Each half (128 weights) uses 64 bytes of ql and 32 of qh: weight 32 k + l (k = 0..3,
    l = 0..31) has low bits from ql[l + 32 (k % 2)] (low nibble for k < 2, high for
    k >= 2) and high bits (qh[l] >> 2 k) & 3.
    """
    lead = blocks.shape[:-1]
    ql = blocks[..., :128].reshape(*lead, 2, 2, 32)  # (.., half, k % 2, l)
    qh = blocks[..., 128:192].reshape(*lead, 2, 1, 32)  # (.., half, 1, l)
    scales = blocks[..., 192:208].contiguous().view(torch.int8).float()  # (.., 16)
    d = _fp16_from_bytes(blocks[..., 208:210])  # (rows, nb)
    low = torch.cat([ql & 0xF, ql >> 4], dim=-2)  # (.., half, k = 0..3, l)
    high = (qh >> (2 * torch.arange(4, dtype=torch.uint8))[:, None]) & 3  # (.., half, 4, l)
    q = (low | (high << 4)).float() - 32  # (.., half, 4, 32): weight order within a half
    q = q.reshape(*lead, 16, 16)  # (.., group of 16, 16)
    return (d[..., None, None] * scales[..., None] * q).flatten(1)


DECODERS = {"Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1, "Q5_0": dequantize_q5_0,
            "Q8_0": dequantize_q8_0, "Q4_K": dequantize_q4_k, "Q5_K": dequantize_q5_k,
            "Q6_K": dequantize_q6_k}


def dequantize(kind: str, data: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 weight of ``shape`` (rows, cols) stored as ``kind`` in the bytes ``data``.

    Raises ValueError for a type we do not decode (naming the ones we do) and for bytes
    that do not fill the shape exactly (a truncated or corrupt tensor).
    """
    if kind not in BLOCK_SIZES:
        raise ValueError(f"GGUF tensor type {kind} is not supported; supported: "
                         f"{', '.join(BLOCK_SIZES)}")
    per_block, nbytes = BLOCK_SIZES[kind]
    rows, cols = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[-1])
    if cols % per_block or data.numel() != rows * cols // per_block * nbytes:
        raise ValueError(f"{kind} tensor of shape {tuple(shape)} needs "
                         f"{rows * cols // per_block * nbytes} bytes in blocks of "
                         f"{per_block}, got {data.numel()}: truncated or corrupt")
    data = data.reshape(rows, -1).contiguous()
    if kind in ("F32", "F16"):
        x = data.view(torch.float32 if kind == "F32" else torch.float16).float()
    else:
        x = DECODERS[kind](data.reshape(rows, -1, nbytes))
    return x.reshape(shape)
