"""Layers that keep a GGUF file's weights as its own blocks: memory stays at the file's size.

A GGUF file stores each weight as rows of self-describing blocks (Q4_1: 20 bytes per 32
weights, Q8_0: 34; :mod:`.gguf_blocks`). Dequantizing them to fp32 on load (the
reference path of :mod:`infer_lab.gguf`) multiplies the model's memory by 6.4 for Q4_1;
these layers keep the bytes and decode them when they run, as llama.cpp does:

* :class:`GGUFLinear` — ``y = x W^T`` with W decoded from its blocks on every call. One
  layer may hold several row ranges of different block types: a fused q/k/v projection
  whose value rows a Q4_K_M file stores as Q6_K and whose query rows are Q4_K.
* :class:`GGUFEmbedding` — a token lookup that decodes only the rows it gathers; with tied
  embeddings the output head is a :class:`GGUFLinear` over the *same* tensor, stored once.

Rows are independent in every block type, so row permutations (the q/k unpermute of
:func:`infer_lab.gguf.unpermute`) and row concatenation act on the raw bytes.

Decode-then-multiply reads the 4-bit codes, then writes and reads an fp32 copy of the
weight: it saves memory, not time. A fused kernel that decodes inside the matmul is what
makes fewer bytes mean more speed (issue 16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gguf_blocks import BLOCK_SIZES, dequantize


@dataclass
class BlockRows:
    """Rows of one weight stored as GGUF blocks: ``data`` is (rows, bytes per row) uint8."""

    kind: str  # "Q4_1", "Q8_0", "F32", ...
    data: torch.Tensor  # (rows, bytes_per_row) uint8
    cols: int  # weights per row

    def __post_init__(self):
        if self.kind not in BLOCK_SIZES:
            raise ValueError(f"GGUF tensor type {self.kind} is not supported; supported: "
                             f"{', '.join(BLOCK_SIZES)}")
        per_block, nbytes = BLOCK_SIZES[self.kind]
        if self.data.dim() != 2 or self.data.dtype != torch.uint8 or \
                self.cols % per_block or self.data.shape[1] != self.cols // per_block * nbytes:
            raise ValueError(f"{self.kind} rows of {self.cols} weights need "
                             f"{self.cols // per_block * nbytes} bytes each, got a "
                             f"{self.data.dtype} tensor of shape {tuple(self.data.shape)}")

    def decode(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The fp32 weight (rows, cols), or only the rows indexed by ``rows``."""
        data = self.data if rows is None else self.data[rows]  # (r, bytes_per_row)
        return dequantize(self.kind, data, (data.shape[0], self.cols))  # (r, cols)


class GGUFLinear(nn.Module):
    """A bias-free linear layer whose weight rows are GGUF blocks, decoded per call."""

    is_quantized = True  # quantize_model refuses to quantize it again

    def __init__(self, parts: Sequence[BlockRows]):
        super().__init__()
        if not parts or len({p.cols for p in parts}) != 1:
            raise ValueError("GGUFLinear needs one or more row ranges of equal width")
        self.kinds = tuple(p.kind for p in parts)
        self.in_features = parts[0].cols
        self.out_features = sum(p.data.shape[0] for p in parts)
        for i, p in enumerate(parts):
            self.register_buffer(f"blocks_{i}", p.data)

    def parts(self) -> list[BlockRows]:
        return [BlockRows(kind, getattr(self, f"blocks_{i}"), self.in_features)
                for i, kind in enumerate(self.kinds)]

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = [p.decode() for p in self.parts()]  # [(rows_i, in)]
        return (w[0] if len(w) == 1 else torch.cat(w)).to(dtype)  # (out, in)

    @property
    def bits_per_weight(self) -> float:
        stored = sum(p.data.numel() for p in self.parts())
        return 8 * stored / (self.in_features * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{'+'.join(self.kinds)}, {self.bits_per_weight:.2f} bits/weight")


class GGUFEmbedding(nn.Module):
    """Token embedding over GGUF block rows: decodes only the rows it looks up."""

    is_quantized = True

    def __init__(self, rows: BlockRows, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.kind, self.embedding_dim, self.dtype = rows.kind, rows.cols, dtype
        self.num_embeddings = rows.data.shape[0]
        self.register_buffer("blocks", rows.data)

    def rows(self) -> BlockRows:
        return BlockRows(self.kind, self.blocks, self.embedding_dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)  # (B*T,)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token ids must lie in 0..{self.num_embeddings - 1}")
        x = self.rows().decode(flat)  # (B*T, C)
        return x.to(self.dtype).reshape(*idx.shape, self.embedding_dim)  # (B, T, C)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) converts float tensors only; follow it with the output dtype.
        self.dtype = fn(torch.zeros((), dtype=self.dtype)).dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.kind}"
