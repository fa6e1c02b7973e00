"""Paged attention: K/V live in a pool of blocks and are read through block tables.

PagedAttention (Kwon et al. 2023) keeps every layer's keys and values in one pool of
fixed-size blocks, (num_blocks, n_kv_head, block_size, head_dim) per layer, and finds
token t of a sequence through that sequence's block table:

    block(t) = block_table[t // block_size],   offset(t) = t % block_size
    o_i      = sum_j softmax_j(q_i . k_j / sqrt(d)) v_j,   j <= i

Two ways to read the pool, both exact:

* :func:`paged_attention` *gathers* each sequence's keys into a padded (B, H_kv, S, D)
  tensor and runs ordinary attention on it: the plain reference, and what a prefill
  forward (many queries per row) does.
* :func:`paged_decode_attention` works *block by block*, as the vLLM kernel does: each
  decode query meets only its own blocks, a whole block at a time, and the softmax is
  combined across a row's blocks in two passes: the row's one max over all its blocks,
  then one sum of exponentials (exact; not flash-decoding's split softmax, where each
  split keeps its own max and sum and the combine rescales them by exp(m_j - m)).
  Nothing is padded to the longest sequence of the batch, so a step reads
  each sequence's K/V about once, one contiguous copy per block rather than one per slot.

:class:`PagedKVCache` is the pool. For each forward, ``pool.prepare(...)`` returns a
:class:`PagedBatch`, that forward's view of the pool (the rows' block tables and what
to read), which speaks the cache contract of :mod:`infer_lab.kv_cache` (``begin``,
``attend``), so the model runs a batch of sequences of different lengths, each with its
own block table, without knowing the cache is paged. Which of the two reads a layer
uses is the view's decision, not the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kv_cache import Step, attention_mask, sdpa


def slot_mapping(block_tables: torch.Tensor, positions: torch.Tensor,
                 block_size: int) -> torch.Tensor:
    """Pool slot (block * block_size + offset) of every position: block_tables
    (B, n_blocks), positions (B, T) >= 0."""
    blocks = block_tables.gather(1, positions // block_size)  # (B, T)
    return blocks * block_size + positions % block_size


def gather_slots(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """pool (num_blocks, H_kv, block_size, D), slots (...) -> (..., H_kv, D)."""
    bs = pool.shape[2]
    return pool[slots // bs, :, slots % bs]


def paged_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor) -> torch.Tensor:
    """Decode attention by gathering each sequence's K/V, the reference to match.

    q (B, H, D); k_pool, v_pool (num_blocks, H_kv, block_size, D); block_tables
    (B, n_blocks); context_lens (B,): row b attends to positions 0 .. context_lens[b] - 1.
    Returns (B, H, D).
    """
    B, H, D = q.shape
    S = int(context_lens.max())
    pos = torch.arange(S, device=q.device).expand(B, S)  # (B, S)
    slots = slot_mapping(block_tables, pos, k_pool.shape[2])  # (B, S)
    k = gather_slots(k_pool, slots).transpose(1, 2)  # (B, H_kv, S, D)
    v = gather_slots(v_pool, slots).transpose(1, 2)
    rep = H // k.shape[1]  # grouped-query attention: each KV head serves `rep` heads
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)  # (B, H, S, D)
    scores = (q[:, :, None] @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(D)  # (B, H, S)
    scores = scores.masked_fill((pos >= context_lens[:, None])[:, None], float("-inf"))
    return (scores.softmax(-1)[:, :, None] @ v).squeeze(2)  # (B, H, D)


def decode_blocks(block_tables: list[list[int]], context_lens: list[int], block_size: int,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """What :func:`paged_decode_attention` needs, flattened over every row's own blocks.

    blocks (M,): pool block ids; rows (M,): the row each belongs to; bias (M, 1, 1, bs):
    0 for a slot that holds one of the row's positions, -inf past its end.
    """
    blocks, rows, first = [], [], []
    for b, (table, n) in enumerate(zip(block_tables, context_lens)):
        used = -(-n // block_size)
        blocks += table[:used]
        rows += [b] * used
        first += range(0, used * block_size, block_size)
    lens = torch.tensor(context_lens)[torch.tensor(rows)]  # (M,)
    past_end = torch.tensor(first)[:, None] + torch.arange(block_size) >= lens[:, None]
    bias = torch.zeros(past_end.shape).masked_fill_(past_end, float("-inf"))  # (M, bs)
    as_long = dict(dtype=torch.long, device=device)
    return {"blocks": torch.tensor(blocks, **as_long), "rows": torch.tensor(rows, **as_long),
            "bias": bias[:, None, None, :].to(device)}


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           blocks: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor,
                           workspace: tuple[torch.Tensor, torch.Tensor] | None = None
                           ) -> torch.Tensor:
    """One query per row against that row's blocks only, read a block at a time.

    q (B, H, D); pools (num_blocks, H_kv, bs, D); blocks, rows, bias from
    :func:`decode_blocks`. Per block, s = q k^T; per row, m = max s, and

        o = sum_blocks exp(s - m) v / sum_blocks sum exp(s - m)

    which is softmax over the row's positions, whatever block each one sits in.
    workspace: two buffers of at least M blocks to copy the blocks into, reused across
    calls (a fresh multi-MB tensor per layer costs page faults: about 2x the copy itself
    on a CPU). M counts a block once per row that reads it, so rows sharing a prefix
    can make M larger than the pool. Returns (B, H, D).
    """
    B, H, D = q.shape
    M, (_, H_kv, bs, _) = len(blocks), k_pool.shape
    if workspace is None:
        workspace = (k_pool.new_empty(M, H_kv, bs, D), v_pool.new_empty(M, H_kv, bs, D))
    if min(len(w) for w in workspace) < M:  # out= would silently resize (and reallocate)
        raise ValueError(f"workspace holds {min(len(w) for w in workspace)} blocks but this "
                         f"step reads {M}")
    # Blocks as flat rows: one contiguous copy of H_kv * bs * D values per block.
    kb = torch.index_select(k_pool.flatten(1), 0, blocks,
                            out=workspace[0].view(-1, H_kv * bs * D)[:M]).view(M, H_kv, bs, D)
    vb = torch.index_select(v_pool.flatten(1), 0, blocks,
                            out=workspace[1].view(-1, H_kv * bs * D)[:M]).view(M, H_kv, bs, D)
    qb = q.view(B, H_kv, H // H_kv, D).index_select(0, rows)  # (M, H_kv, rep, D)
    s = (qb @ kb.transpose(-1, -2)) * (1 / math.sqrt(D)) + bias.to(q.dtype)  # (M, H_kv, rep, bs)
    idx = rows[:, None, None].expand(-1, H_kv, H // H_kv)  # (M, H_kv, rep)
    m = torch.full((B, H_kv, H // H_kv), float("-inf"), dtype=s.dtype, device=q.device)
    m = m.scatter_reduce(0, idx, s.amax(-1), "amax")  # (B, H_kv, rep): the row's max
    p = torch.exp(s - m.index_select(0, rows)[..., None])  # (M, H_kv, rep, bs)
    denom = torch.zeros_like(m).index_add_(0, rows, p.sum(-1))  # (B, H_kv, rep)
    out = torch.zeros(B, H_kv, H // H_kv, D, dtype=s.dtype, device=q.device)
    out.index_add_(0, rows, p @ vb)  # (B, H_kv, rep, D)
    return (out / denom[..., None]).view(B, H, D)


DECODE_ATTENTION = ("auto", "blocks", "kernel", "cpp")


def resolve_decode_attention(choice: str, pool: torch.Tensor) -> str:
    """How decode steps read the pool: "blocks" (:func:`paged_decode_attention`, PyTorch,
    copies the step's blocks), "kernel" (the Triton paged-attention kernel of
    :mod:`infer_lab.kernels`) or "cpp" (:mod:`infer_lab.runtimes.paged_cpu`: compiled C++
    on CPU threads, reading blocks in place; float32). "auto" picks the Triton kernel on a
    CUDA pool with Triton installed, else "blocks" (the C++ kernel is built on request
    only: a minute of compiling is not a default). "kernel" on a CPU pool needs Triton's
    interpreter (tests; slow)."""
    if choice not in DECODE_ATTENTION:
        raise ValueError(f"decode_attention must be one of {', '.join(DECODE_ATTENTION)}, "
                         f"got {choice!r}")
    if choice == "cpp":
        from ..runtimes import paged_cpu

        if pool.device.type != "cpu" or pool.dtype != torch.float32:
            raise ValueError(f"decode_attention='cpp' reads float32 pools on a CPU; this one "
                             f"is {pool.dtype} on {pool.device}")
        if not paged_cpu.available():
            raise ValueError(f"decode_attention='cpp': the kernel could not be built "
                             f"({paged_cpu.extension()[1]}); use 'blocks'")
        return "cpp"
    if choice == "blocks" or (choice == "auto" and pool.device.type != "cuda"):
        return "blocks"  # decided without importing Triton (a second of startup, memory)
    from ..kernels.runtime import INSTALL, backend

    where = backend(pool)
    if choice == "auto":
        return "kernel" if where == "triton" else "blocks"
    if choice == "kernel" and where == "reference":
        raise ValueError(f"decode_attention='kernel' needs Triton on a CUDA pool, or its "
                         f"interpreter (TRITON_INTERPRET=1) on a CPU one ({INSTALL})")
    return choice


@dataclass
class PagedStep(Step):
    """One forward over the pool: where the new tokens go, and what attention reads."""

    valid: torch.Tensor  # (B, T) True for a real token, False for left padding
    write: torch.Tensor  # (N,) pool slot of each real new token
    read: torch.Tensor | None  # (B, S) slots to gather (a longer chunk), or None
    # decode_blocks() of a decode read block by block, or {"tables", "lens"} of a decode
    # by the kernel, or None (a longer chunk)
    blocks: dict[str, torch.Tensor] | None


class PagedKVCache:
    """A pool of KV blocks for every layer; ``prepare`` makes each forward's view.

    Usage, once per forward (the engine's model runner does this)::

        batch = cache.prepare(block_tables, starts, num_new, T)
        logits = model(idx, batch, batch.pos)

    Row b computes tokens at positions starts[b] .. starts[b] + num_new[b] - 1, left-
    padded to T columns; their K/V are written to the row's blocks, and attention reads
    positions 0 .. starts[b] + num_new[b] - 1 back through the same table. A forward of
    one token per row (decode) reads the blocks in place (:func:`paged_decode_attention`);
    a longer one gathers them (masks come from positions, padding keys get -1).
    """

    def __init__(self, n_layer: int, num_blocks: int, block_size: int, n_kv_head: int,
                 head_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", decode_attention: str = "auto"):
        self.num_blocks, self.block_size = num_blocks, block_size
        shape = (n_layer, num_blocks, n_kv_head, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, blocks, H_kv, bs, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k.device
        self.decode_attention = resolve_decode_attention(decode_attention, self.k)
        # Decode copies a step's blocks here, one layer at a time; reused across layers
        # and steps. A block shared by r rows (a common prefix) is read r times, so a step
        # can read more blocks than the pool holds: the workspace grows to the largest
        # step seen (doubling, so it reallocates O(log) times, never per step). Scratch,
        # not KV memory: bytes() counts the pool only.
        self._workspace: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module, num_blocks: int, block_size: int,
                  decode_attention: str = "auto") -> "PagedKVCache":
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layer, num_blocks, block_size, cfg.n_kv_head, cfg.head_dim,
                   dtype=p.dtype, device=p.device, decode_attention=decode_attention)

    def bytes(self) -> int:
        """Bytes of the whole pool (K and V, every layer)."""
        return 2 * self.k.numel() * self.k.element_size()

    def bytes_per_block(self) -> int:
        return self.bytes() // self.num_blocks

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (N, H_kv, D) at pool slots (N,)."""
        blk, off = slots // self.block_size, slots % self.block_size
        self.k[layer, blk, :, off] = k
        self.v[layer, blk, :, off] = v

    def workspace(self, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scratch for a decode that reads ``num_blocks`` blocks (rows x own blocks)."""
        have = 0 if self._workspace is None else len(self._workspace[0])
        if num_blocks > have:
            n = max(num_blocks, 2 * have, self.num_blocks)
            shape = (n, *self.k.shape[2:])  # (n, H_kv, bs, D)
            self._workspace = (self.k.new_empty(shape), self.v.new_empty(shape))
        return self._workspace

    def prepare(self, block_tables: list[list[int]], starts: list[int], num_new: list[int],
                T: int) -> "PagedBatch":
        """The view of the pool for one forward (its positions are ``.pos``, (B, T))."""
        bs, dev = self.block_size, self.device
        ends = [s + n for s, n in zip(starts, num_new)]
        width = -(-max(ends) // bs)
        # Rows pad their tables with block 0: padded keys read real (finite) memory and
        # are masked out by position -1, never by an out-of-range index.
        tables = torch.tensor([t[:width] + [0] * (width - len(t[:width]))
                               for t in block_tables], dtype=torch.long)
        pos = torch.tensor([[-1] * (T - n) + list(range(s, s + n))
                            for s, n in zip(starts, num_new)], dtype=torch.long)
        valid = pos >= 0  # (B, T)
        write = slot_mapping(tables, pos.clamp(min=0), bs)[valid].to(dev)
        pos, valid = pos.to(dev), valid.to(dev)
        if T == 1 and self.decode_attention in ("kernel", "cpp"):  # kernels read tables
            step = PagedStep(pos, None, valid, write, None,
                             {"tables": tables.to(dev), "lens": torch.tensor(ends, device=dev)})
            return PagedBatch(self, step)
        if T == 1:  # a decode: block by block, no mask (each row sees its own blocks)
            step = PagedStep(pos, None, valid, write, None,
                             decode_blocks(block_tables, ends, bs, dev))
            return PagedBatch(self, step)
        S = max(ends)
        kpos = torch.arange(S).expand(len(ends), S).clone()  # (B, S)
        kpos[kpos >= torch.tensor(ends)[:, None]] = -1
        read = slot_mapping(tables, kpos.clamp(min=0), bs).to(dev)
        # SDPA's own causal rule is exact for a lone prompt that starts from nothing.
        plain = len(ends) == 1 and starts[0] == 0 and num_new[0] == T
        mask = None if plain else attention_mask(pos, kpos.to(dev), None)
        return PagedBatch(self, PagedStep(pos, mask, valid, write, read, None))


class PagedBatch:
    """One forward's view of a :class:`PagedKVCache`: the cache contract over the pool."""

    def __init__(self, pool: PagedKVCache, step: PagedStep):
        self.pool, self.step = pool, step

    @property
    def pos(self) -> torch.Tensor:
        return self.step.pos

    def begin(self, T: int, pos: torch.Tensor | None) -> PagedStep:
        if pos is None or pos.shape != self.step.pos.shape:
            raise ValueError("a PagedBatch serves the forward it was prepared for: pass "
                             "its .pos to the model")
        return self.step

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: PagedStep) -> torch.Tensor:
        """Write k, v (B, H_kv, T, D) into their slots, then attend q (B, H, T, D)."""
        pool = self.pool
        # Only real tokens are written: padding must never overwrite another row's slot.
        pool.write(layer, step.write, k.transpose(1, 2)[step.valid],
                   v.transpose(1, 2)[step.valid])  # (N, H_kv, D)
        if step.blocks is not None and pool.decode_attention == "cpp":  # in place, C++
            from ..runtimes.paged_cpu import paged_decode_cpu

            b = step.blocks
            out = paged_decode_cpu(q[:, :, 0], pool.k[layer], pool.v[layer], b["tables"],
                                   b["lens"])
            return out[:, :, None]  # (B, H, 1, D)
        if step.blocks is not None and "tables" in step.blocks:  # decode by the kernel
            from ..kernels.paged_attention import paged_attention_triton

            b = step.blocks
            # prepare() built the tables from the block manager's: no per-layer host sync
            # to re-check block ids and lengths.
            out = paged_attention_triton(q[:, :, 0], pool.k[layer], pool.v[layer],
                                         b["tables"], b["lens"], check_values=False)
            return out[:, :, None]  # (B, H, 1, D)
        if step.blocks is not None:  # decode: each row's own blocks, read in place
            b = step.blocks
            out = paged_decode_attention(q[:, :, 0], pool.k[layer], pool.v[layer],
                                         b["blocks"], b["rows"], b["bias"],
                                         pool.workspace(len(b["blocks"])))  # (B, H, D)
            return out[:, :, None]  # (B, H, 1, D)
        k_all = gather_slots(pool.k[layer], step.read).transpose(1, 2)  # (B, H_kv, S, D)
        v_all = gather_slots(pool.v[layer], step.read).transpose(1, 2)
        return sdpa(q, k_all, v_all, step.mask)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Contiguous decode attention q (B, H, D), k, v (B, H_kv, S, D), for tests."""
    out = F.scaled_dot_product_attention(q[:, :, None], k, v,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out.squeeze(2)
