"""The cache contract the model attends through, and the contiguous KV cache.

Autoregressive decoding recomputes nothing it has seen: token t's keys and values are
the same at every later step, so we keep them. A step then costs O(1) matmuls in the
sequence length (plus attention's O(n) read of the cache) instead of a full O(n)
forward. Memory grows as ``2 * layers * kv_heads * head_dim * bytes`` per token.

**The contract.** :class:`~infer_lab.model.Transformer` talks to a cache through two
calls and nothing else (:class:`AttentionCache`):

    step = cache.begin(T, pos)                # once per forward: positions, mask, slots
    y    = cache.attend(layer, q, k, v, step)  # every layer: store k, v; attend q to all

``begin`` decides everything a forward needs (where the T new tokens go, their absolute
positions, who may attend to whom) and records the tokens as written; ``attend`` stores
the layer's new K/V and returns softmax(q K^T / sqrt(d)) V over what the cache holds.
How K/V are stored (one contiguous tensor, a ring buffer, int8 codes, a pool of blocks)
and how attention reads them (SDPA, block by block, a kernel) is the cache's business,
so a new storage or a new kernel is one more implementation, never a branch in the
model. :class:`NoCache` is the implementation for a forward without memory.

Each slot of the contiguous cache also records the absolute *position* of the token
stored there (-1 for an empty or padding slot). Attention masks are derived from
positions alone, which handles three cases with one rule:

* left padding in a batch of prompts of different lengths (pad slots are -1),
* causality inside a prefill chunk (key position <= query position),
* a sliding window (Mistral-style, Jiang et al. 2023): keys older than W positions
  are invisible, and the cache is a ring buffer of W slots, so memory stops growing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class Step:
    """What a cache decided for one forward; every layer hands it back to ``attend``.

    Implementations subclass it with what their ``attend`` needs (slots, block tables).
    """

    pos: torch.Tensor  # (B, T) absolute position of each new token, -1 = left padding
    mask: torch.Tensor | None  # (B, 1, T, S) True = may attend; None: SDPA's causal rule


class AttentionCache(Protocol):
    """What :class:`~infer_lab.model.Transformer` needs from a KV cache: two calls."""

    def begin(self, T: int, pos: torch.Tensor | None) -> Step:
        """Plan a forward of T new tokens per row at positions ``pos`` (B, T), or, when
        None, at the positions that continue what the cache holds."""
        ...

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        """Store k, v (B, H_kv, T, D) of ``layer``; attention of q (B, H, T, D) -> (B, H, T, D)."""
        ...


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
         ) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k, v (B, H_kv, S, D) with a boolean mask, or with
    the causal rule (keys up to the query's own index) when ``mask`` is None."""
    T = q.shape[2]
    # GQA: each KV head serves n_head / n_kv_head query heads, without copying K/V.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          is_causal=mask is None and T > 1,
                                          enable_gqa=k.shape[1] != q.shape[1])


def attention_mask(qpos: torch.Tensor, kpos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask (B, 1, Tq, Tk): True where query i may attend to key j."""
    q = qpos[:, None, :, None]  # (B, 1, Tq, 1)
    k = kpos[:, None, None, :]  # (B, 1, 1, Tk)
    ok = (k >= 0) & (k <= q)
    if window is not None:
        ok &= (q - k) < window
    # A padding query sees nothing; let it see everything so softmax stays finite.
    # Its output is never used.
    return ok | (q < 0)


class NoCache:
    """No memory: each forward attends over its own tokens only (training, the O(n^2)
    baseline). Positions default to 0..T-1; given positions (left padding) get a mask."""

    def __init__(self, batch: int, device: torch.device | str):
        self.batch, self.device = batch, device

    def begin(self, T: int, pos: torch.Tensor | None) -> Step:
        if pos is None:  # plain causal attention: SDPA's fast path, no mask
            pos = torch.arange(T, device=self.device)[None, :].expand(self.batch, T)
            return Step(pos, None)
        return Step(pos, attention_mask(pos, pos, None))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        return sdpa(q, k, v, step.mask)


@dataclass
class KVStep(Step):
    start: int  # slot of the first new token (the cache's length before this forward)
    slots: torch.Tensor  # (T,) slot of each new token, before the ring's modulo
class KVCache:
    """Per-layer K/V tensors of shape (B, n_kv_head, S, head_dim), updated in place.

    Implements :class:`AttentionCache`; also ``rollback`` (speculative decoding) and
    ``reset``. ``update`` is the storage step that quantized caches override.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, head_dim: int,
                 max_len: int, *, window: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.capacity = min(max_len, window) if window else max_len
        self.max_len = max_len
        self.dtype = dtype
        self._allocate((n_layer, batch, n_kv_head, self.capacity, head_dim), dtype, device)
        self.kpos = torch.full((batch, self.capacity), -1, dtype=torch.long, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0  # tokens written so far (slot count, shared by the batch)
        self.padded = False  # any slot holding left padding (position -1)?

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int = 1, max_len: int | None = None,
                  window: int | None = None) -> "KVCache":
        """A cache shaped for ``model`` (a :class:`~infer_lab.model.Transformer`)."""
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, batch, cfg.n_kv_head, cfg.head_dim,
                   max_len or cfg.max_seq_len, window=window, dtype=p.dtype, device=p.device)

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> None:
        """The K/V storage; quantized caches (infer_lab.quant.kv) store codes instead."""
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def batch(self) -> int:
        return self.kpos.shape[0]

    def bytes(self) -> int:
        """Bytes held by K and V (the preallocated buffers, used or not)."""
        return self.k.numel() * self.k.element_size() * 2

    def bytes_used(self) -> int:
        """Bytes of K and V that hold tokens."""
        used = min(self.length, self.capacity)
        return self.bytes() * used // self.capacity

    # -- the contract: once per forward, then every layer --------------------------
    def begin(self, T: int, pos: torch.Tensor | None) -> KVStep:
        """Reserve slots for T new tokens per row, build their mask, record them.

        The new tokens count as written from here on: a forward that raised halfway
        leaves them recorded, and the caller rolls back or discards the cache.
        """
        if self.window is None and self.length + T > self.capacity:
            raise ValueError(f"KV cache is full: {self.length} + {T} tokens > capacity "
                             f"{self.capacity}; create a larger cache or use a sliding window")
        device = self.kpos.device
        if pos is None:
            pos = self.next_pos[:, None] + torch.arange(T, device=device)[None, :]  # (B, T)
        slots = self.length + torch.arange(T, device=device)  # (T,)
        mask = None if self._plain_causal(pos) else attention_mask(
            pos, self._key_positions(pos), self.window)
        step = KVStep(pos, mask, self.length, slots)
        self._record(pos, slots)
        return step

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: KVStep) -> torch.Tensor:
        k_all, v_all = self.update(layer, k, v, step)  # (B, H_kv, S, D)
        return sdpa(q, k_all, v_all, step.mask)

    def _record(self, pos: torch.Tensor, slots: torch.Tensor) -> None:
        T = pos.shape[1]
        keep = min(T, self.capacity)  # a long prefill into a small ring keeps its tail
        self.kpos[:, slots[-keep:] % self.capacity] = pos[:, -keep:]
        self.padded = self.padded or bool((pos < 0).any())
        valid = pos[:, -1] >= 0
        self.next_pos = torch.where(valid, pos[:, -1] + 1, self.next_pos)
        self.length += T

    def _plain_causal(self, pos: torch.Tensor) -> bool:
        """True when SDPA's built-in causal rule is exact, so no mask is needed.

        That holds without padding or a window, for a decode step (one query sees every
        key) or a first prefill (queries and keys are the same tokens).
        """
        T = pos.shape[1]
        return (self.window is None and not self.padded and (T == 1 or self.length == 0)
                and not (T > 1 and bool((pos < 0).any())))

    def _key_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions of the keys attention sees in this forward (B, S_seen)."""
        if self.window is None:
            kpos = self.kpos[:, : self.length + pos.shape[1]].clone()
            kpos[:, self.length:] = pos
            return kpos
        return torch.cat([self.kpos, pos], dim=1)  # ring (old) then the new tokens

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, step: KVStep
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, head_dim); return the keys/values to attend to."""
        T, start = k.shape[2], step.start
        if self.window is None:
            end = start + T
            self.k[layer, :, :, start:end] = k
            self.v[layer, :, :, start:end] = v
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        # Ring buffer: attend over (old ring + new tokens) before overwriting, because a
        # chunk longer than one token could overwrite keys its own queries still need.
        k_all = torch.cat([self.k[layer], k], dim=2)  # (B, H, W + T, D)
        v_all = torch.cat([self.v[layer], v], dim=2)
        keep = min(T, self.capacity)
        idx = step.slots[-keep:] % self.capacity
        self.k[layer, :, :, idx] = k[:, :, -keep:]
        self.v[layer, :, :, idx] = v[:, :, -keep:]
        return k_all, v_all

    def rollback(self, length: int) -> None:
        """Forget every token written after the first ``length`` (speculative decoding)."""
        if self.window is not None:
            raise NotImplementedError("rollback of a sliding-window ring buffer")
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.length}")
        self.kpos[:, length:] = -1
        last = self.kpos[:, :length].max(dim=1).values if length else None
        self.next_pos = last + 1 if last is not None else torch.zeros_like(self.next_pos)
        self.length = length

    def reset(self) -> None:
        self.padded = False
        self.kpos.fill_(-1)
        self.next_pos.zero_()
        self.length = 0
