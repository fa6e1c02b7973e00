"""A token embedding over weight-only quantized rows: a lookup dequantizes only its rows.

An embedding lookup reads B*T rows of the table, so a quantized table costs its codes in
memory and almost nothing per token: E[idx] ~ s[idx] * (q[idx] - z[idx]). In small models
the table is a large share of the weights (SmolLM2-135M: 49152 x 576, 28%), and when the
output head is tied to it (logits = h E^T) the head reads the whole table every token.

Tied, the embedding reads the *head's* codes (:class:`QuantizedEmbedding` holds the head
by reference, not as a submodule, so the model stores and lists the codes once, at
``lm_head``): lookup and projection use the same quantized table, as in
:class:`~.gguf_linear.GGUFEmbedding`. Untied, it owns a quantized table of its own.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class RowSource(Protocol):
    """A quantized weight (out_features, in_features) that can dequantize some of its rows."""

    in_features: int
    out_features: int

    def dequantized_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32
                         ) -> torch.Tensor: ...


class QuantizedEmbedding(nn.Module):
    """Token lookup (..., ) -> (..., C) over the rows of a quantized (V, C) weight."""

    is_quantized = True

    def __init__(self, table: RowSource, tied: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.dtype, self.tied = dtype, tied
        if tied:  # a tuple hides the head from named_modules / state_dict: stored once
            self._head = (table,)
        else:
            self.table = table

    @property
    def source(self) -> RowSource:
        return self._head[0] if self.tied else self.table

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)  # (B*T,)
        # A host sync, so not inside a compiled graph (whose ids are the sampler's own).
        if flat.numel() and not torch.compiler.is_compiling() and (
                int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token ids must lie in 0..{self.num_embeddings - 1}")
        x = self.source.dequantized_rows(flat, self.dtype)  # (B*T, C)
        return x.reshape(*idx.shape, self.embedding_dim)  # (B, T, C)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) converts float tensors only; follow it with the output dtype.
        self.dtype = fn(torch.zeros((), dtype=self.dtype)).dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        how = "rows of the tied head" if self.tied else "own quantized rows"
        return f"{self.num_embeddings}, {self.embedding_dim}, {how}"
