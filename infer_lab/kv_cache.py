"""Contiguous, preallocated key/value cache.

Autoregressive decoding recomputes nothing it has seen: token t's keys and values are
the same at every later step, so we keep them. A step then costs O(1) matmuls in the
sequence length (plus attention's O(n) read of the cache) instead of a full O(n)
forward. Memory grows as ``2 * layers * kv_heads * head_dim * bytes`` per token.

Each slot of the cache also records the absolute *position* of the token stored there
(-1 for an empty or padding slot). Attention masks are derived from positions alone,
which handles three cases with one rule:

* left padding in a batch of prompts of different lengths (pad slots are -1),
* causality inside a prefill chunk (key position <= query position),
* a sliding window (Mistral-style, Jiang et al. 2023): keys older than W positions
  are invisible, and the cache is a ring buffer of W slots, so memory stops growing.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer K/V tensors of shape (B, n_kv_head, S, head_dim), updated in place."""

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
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

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

    # -- called once per forward, before the layers ---------------------------------
    def begin(self, pos: torch.Tensor) -> None:
        """Reserve slots for the T new tokens whose positions are ``pos`` (B, T)."""
        T = pos.shape[1]
        if self.window is None and self.length + T > self.capacity:
            raise ValueError(f"KV cache is full: {self.length} + {T} tokens > capacity "
                             f"{self.capacity}; create a larger cache or use a sliding window")
        self._pending = (pos, self.length + torch.arange(T, device=pos.device))

    def end(self) -> None:
        """Commit the positions of the tokens written by this forward."""
        pos, slots = self._pending
        T = pos.shape[1]
        keep = min(T, self.capacity)  # a long prefill into a small ring keeps its tail
        self.kpos[:, slots[-keep:] % self.capacity] = pos[:, -keep:]
        self.padded = self.padded or bool((pos < 0).any())
        valid = pos[:, -1] >= 0
        self.next_pos = torch.where(valid, pos[:, -1] + 1, self.next_pos)
        self.length += T
        self._pending = None

    def plain_causal(self, pos: torch.Tensor) -> bool:
        """True when SDPA's built-in causal rule is exact, so no mask is needed.

        That holds without padding or a window, for a decode step (one query sees every
        key) or a first prefill (queries and keys are the same tokens).
        """
        T = pos.shape[1]
        return (self.window is None and not self.padded and (T == 1 or self.length == 0)
                and not (T > 1 and bool((pos < 0).any())))

    def attends(self, T: int) -> bool:
        """False: the model runs attention over what :meth:`update` returns. A cache whose
        K/V are not one tensor per row (the paged pool) says True and computes it in
        ``attend(layer, q, k, v)``."""
        return False

    def key_positions(self) -> torch.Tensor:
        """Positions of the keys attention sees in this forward (B, S_seen)."""
        pos, slots = self._pending
        if self.window is None:
            kpos = self.kpos[:, : self.length + pos.shape[1]].clone()
            kpos[:, self.length:] = pos
            return kpos
        return torch.cat([self.kpos, pos], dim=1)  # ring (old) then the new tokens

    # -- called by every attention layer --------------------------------------------
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_head, T, head_dim); return the keys/values to attend to."""
        _, slots = self._pending
        T = k.shape[2]
        if self.window is None:
            end = self.length + T
            self.k[layer, :, :, self.length:end] = k
            self.v[layer, :, :, self.length:end] = v
            return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        # Ring buffer: attend over (old ring + new tokens) before overwriting, because a
        # chunk longer than one token could overwrite keys its own queries still need.
        k_all = torch.cat([self.k[layer], k], dim=2)  # (B, H, W + T, D)
        v_all = torch.cat([self.v[layer], v], dim=2)
        keep = min(T, self.capacity)
        idx = slots[-keep:] % self.capacity
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
