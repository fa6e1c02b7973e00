"""Paged attention, PyTorch reference: K/V live in a block pool, read through block tables.

PagedAttention (Kwon et al. 2023) keeps every layer's keys and values in one pool of
fixed-size blocks, (num_blocks * block_size, n_kv_head, head_dim) per layer, and finds
token t of a sequence through that sequence's block table:

    slot(t) = block_table[t // block_size] * block_size + t % block_size
    o_i     = sum_j softmax_j(q_i . k_slot(j) / sqrt(d)) v_slot(j),  j <= i

This reference *gathers* each sequence's keys into a padded (B, H_kv, S, D) tensor and
hands it to the model's ordinary attention; a fused kernel (infer_lab.kernels) reads
the blocks in place instead and never materialises the gather. The gather is exact, so
this file is also the ground truth such a kernel is checked against.

:class:`PagedKVCache` speaks the cache interface :class:`~infer_lab.model.Transformer`
calls (``begin``, ``plain_causal``, ``key_positions``, ``update``, ``end``), so the
model runs a batch of sequences of different lengths, each with its own block table,
without knowing the cache is paged. Masks come from positions as everywhere else:
padding keys get position -1 and are invisible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def slot_mapping(block_tables: torch.Tensor, positions: torch.Tensor,
                 block_size: int) -> torch.Tensor:
    """Pool slot of every position: block_tables (B, n_blocks), positions (B, T) >= 0."""
    blocks = block_tables.gather(1, positions // block_size)  # (B, T)
    return blocks * block_size + positions % block_size


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor,
                    block_size: int) -> torch.Tensor:
    """Decode attention straight from the pool (one query per sequence), the reference a
    kernel must match.

    q (B, H, D); k_pool, v_pool (num_slots, H_kv, D); block_tables (B, n_blocks);
    context_lens (B,): sequence b attends to its positions 0 .. context_lens[b] - 1.
    Returns (B, H, D).
    """
    B, H, D = q.shape
    S = int(context_lens.max())
    pos = torch.arange(S, device=q.device).expand(B, S)  # (B, S)
    slots = slot_mapping(block_tables, pos, block_size)  # (B, S)
    k = k_pool[slots].transpose(1, 2)  # (B, H_kv, S, D)
    v = v_pool[slots].transpose(1, 2)
    rep = H // k.shape[1]  # grouped-query attention: each KV head serves `rep` heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # (B, H, S, D)
    scores = (q[:, :, None] @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(D)  # (B, H, S)
    scores = scores.masked_fill((pos >= context_lens[:, None])[:, None], float("-inf"))
    return (scores.softmax(-1)[:, :, None] @ v).squeeze(2)  # (B, H, D)


class PagedKVCache:
    """A pool of KV blocks for every layer, plus the block tables of the current forward.

    Usage, once per forward (the engine's model runner does this)::

        pos = cache.prepare(block_tables, starts, num_new, T)   # (B, T), -1 = padding
        logits = model(idx, cache, pos)

    Row b computes tokens at positions starts[b] .. starts[b] + num_new[b] - 1, left-
    padded to T columns; their K/V are written to the row's blocks, and attention reads
    positions 0 .. starts[b] + num_new[b] - 1 back through the same table.
    """

    window = None  # the paged cache keeps every position (no sliding window)

    def __init__(self, n_layer: int, num_blocks: int, block_size: int, n_kv_head: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.num_blocks, self.block_size = num_blocks, block_size
        shape = (n_layer, num_blocks * block_size, n_kv_head, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, slots, H_kv, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k.device
        self.next_pos = torch.zeros(0, dtype=torch.long, device=self.device)
        self._meta: dict[str, torch.Tensor] | None = None
        self._plain = False

    @classmethod
    def for_model(cls, model: torch.nn.Module, num_blocks: int, block_size: int
                  ) -> "PagedKVCache":
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, num_blocks, block_size, cfg.n_kv_head, cfg.head_dim,
                   dtype=p.dtype, device=p.device)

    def bytes(self) -> int:
        """Bytes of the whole pool (K and V, every layer)."""
        return 2 * self.k.numel() * self.k.element_size()

    def bytes_per_block(self) -> int:
        return self.bytes() // self.num_blocks

    # -- set up by the runner before each forward ----------------------------------------
    def prepare(self, block_tables: list[list[int]], starts: list[int], num_new: list[int],
                T: int) -> torch.Tensor:
        """Metadata for one forward; returns the positions (B, T) to pass to the model."""
        B, bs = len(starts), self.block_size
        ends = [s + n for s, n in zip(starts, num_new)]
        S = max(ends)
        width = -(-S // bs)
        # Rows pad their tables with block 0: padded keys read real (finite) memory and
        # are masked out by position -1, never by an out-of-range index.
        tables = torch.tensor([t[:width] + [0] * (width - len(t[:width]))
                               for t in block_tables], dtype=torch.long)
        pos = torch.tensor([[-1] * (T - n) + list(range(s, s + n))
                            for s, n in zip(starts, num_new)], dtype=torch.long)
        kpos = torch.arange(S).expand(B, S).clone()  # (B, S)
        kpos[kpos >= torch.tensor(ends)[:, None]] = -1
        valid = pos >= 0  # (B, T)
        write = slot_mapping(tables, pos.clamp(min=0), bs)[valid]  # (N,)
        read = slot_mapping(tables, kpos.clamp(min=0), bs)  # (B, S)
        dev = self.device
        self._meta = {"pos": pos.to(dev), "kpos": kpos.to(dev), "valid": valid.to(dev),
                      "write": write.to(dev), "read": read.to(dev)}
        # SDPA's own causal rule is exact when no key is padding and either every row
        # is one query over its whole context, or a lone prompt starts from nothing.
        self._plain = ((T == 1 and len(set(ends)) == 1)
                       or (B == 1 and starts[0] == 0 and num_new[0] == T))
        return self._meta["pos"]

    # -- the cache interface Transformer.forward calls -----------------------------------
    def begin(self, pos: torch.Tensor) -> None:
        if self._meta is None or pos.shape != self._meta["pos"].shape:
            raise RuntimeError("call PagedKVCache.prepare() before each forward and pass "
                               "its positions to the model")

    def plain_causal(self, pos: torch.Tensor) -> bool:
        return self._plain

    def key_positions(self) -> torch.Tensor:
        """Positions of the keys each row attends over (B, S), -1 for padding."""
        return self._meta["kpos"]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new k, v (B, H_kv, T, D) into their slots; gather (B, H_kv, S, D)."""
        m = self._meta
        # Only real tokens are written: padding must never overwrite another row's slot.
        self.k[layer].index_copy_(0, m["write"], k.transpose(1, 2)[m["valid"]])  # (N, H, D)
        self.v[layer].index_copy_(0, m["write"], v.transpose(1, 2)[m["valid"]])
        k_all = self.k[layer][m["read"]].transpose(1, 2)  # (B, H_kv, S, D)
        v_all = self.v[layer][m["read"]].transpose(1, 2)
        return k_all, v_all

    def end(self) -> None:
        self.next_pos = self._meta["kpos"].max(dim=1).values + 1  # (B,)
        self._meta = None


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Contiguous decode attention q (B, H, D), k, v (B, H_kv, S, D), for tests."""
    out = F.scaled_dot_product_attention(q[:, :, None], k, v,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out.squeeze(2)
