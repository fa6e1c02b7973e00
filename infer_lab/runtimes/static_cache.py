"""A KV cache of fixed shapes, for compiled decoding: every step sees the same tensors.

torch.compile specialises a graph on shapes and on the Python values it reads. The
contiguous :class:`~infer_lab.kv_cache.KVCache` slices its buffers to ``length``, a Python
int that grows every step, so a compiled step would recompile at every token. Here
(gpt-fast's static cache) nothing about a step lives in Python:

* token at position p of row b is stored at slot p (a scatter along the sequence axis);
* every step attends over all ``max_len`` slots, with a mask from each slot's recorded
  position (-1: empty), so the shapes of a decode step never change;
* left padding (position -1) writes to one extra slot that no query ever sees.

Attention reads the whole buffer each step (max_len slots, used or not): size it to the
request (prompt + new tokens), as :func:`.compiled.CompiledDecoder` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv_cache import Step, attention_mask, sdpa


@dataclass
class StaticStep(Step):
    slots: torch.Tensor  # (B, T) slot of each new token; padding -> the trash slot


class StaticKVCache:
    """Implements the cache contract (``begin``, ``attend``) at fixed shapes."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, head_dim: int,
                 max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.capacity = max_len
        shape = (n_layer, batch, n_kv_head, max_len + 1, head_dim)  # +1: the trash slot
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, H_kv, S + 1, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.kpos = torch.full((batch, max_len + 1), -1, dtype=torch.long, device=device)

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor, kpos: torch.Tensor) -> StaticKVCache:
        """A cache that reads and writes the given buffers (k, v (L, B, H_kv, S + 1, D),
        kpos (B, S + 1)): an exported step takes them as inputs (:mod:`.aot`)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.kpos = k, v, kpos
        cache.capacity = k.shape[3] - 1  # the trash slot is not a position
        return cache

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, max_len: int) -> StaticKVCache:
        cfg = model.config
        return cls(cfg.n_layer, batch, cfg.n_kv_head, cfg.head_dim, max_len,
                   dtype=model.dtype, device=model.device)

    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def reset(self) -> None:
        """Forget every token (the buffers stay: a compiled step keeps using them)."""
        self.kpos.fill_(-1)

    def begin(self, T: int, pos: torch.Tensor | None) -> StaticStep:
        if pos is None:
            raise ValueError("a StaticKVCache keeps no length in Python (that would make a "
                             "compiled step recompile every token): pass positions")
        # Positions past the buffer would scatter out of bounds: refuse (a host sync, so
        # only outside a compiled graph; the decoder checks lengths before it starts).
        if not torch.compiler.is_compiling() and int(pos.max()) >= self.capacity:
            raise ValueError(f"position {int(pos.max())} does not fit a static cache of "
                             f"{self.capacity} slots")
        slots = torch.where(pos >= 0, pos, self.capacity)  # (B, T)
        self.kpos.scatter_(1, slots, pos)  # the trash slot only ever records -1
        return StaticStep(pos, attention_mask(pos, self.kpos, None), slots)  # (B, 1, T, S+1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: StaticStep) -> torch.Tensor:
        """Scatter k, v (B, H_kv, T, D) to their slots; attend q over every slot."""
        idx = step.slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        return sdpa(q, self.k[layer], self.v[layer], step.mask)  # (B, H, T, D)
