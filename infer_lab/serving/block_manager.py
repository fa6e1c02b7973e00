"""KV memory in fixed-size blocks, with reference counts and hash-based prefix caching.

PagedAttention (Kwon et al. 2023, vLLM) stores the KV cache like virtual memory: a
sequence's tokens live in blocks of ``block_size`` token slots that can sit anywhere
in one big pool, and the sequence's *block table* maps logical block i to a physical
block. Token t of a sequence lives in slot

    slot(t) = block_table[t // block_size] * block_size + t % block_size

so memory grows one block at a time instead of being reserved for the maximum length,
and waste is at most ``block_size - 1`` slots per sequence (the last, partly full
block) instead of ``max_len - len``.

Prefix caching (vLLM's automatic prefix caching; SGLang's RadixAttention, Zheng et al.
2024, is the tree-shaped version of the same idea): a *full* block is identified by
everything before and in it,

    h_i = hash(h_{i-1}, tokens of block i)

so two requests that share a prompt prefix map its blocks to the same physical blocks
(reference count > 1) and skip computing them. A freed block keeps its hash and stays
findable until the block is reused for something else (least recently freed first),
so the cache also serves requests that arrive after the first one finished.

The lookup plugs in from outside (``prefix_lookup``; lab 06 runs the learner's): it gets
the tokens, the block size, a read-only view of the index and :func:`block_hash`, and
returns block ids; the manager still compares each hit's own tokens with the prompt's
(so a hash collision never serves other tokens' K/V).

This module is plain Python: it decides which block ids hold what; the tensors live
in :mod:`infer_lab.serving.paged_attention`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and its K/V are computed
    token_ids: tuple[int, ...] = ()  # the tokens behind ``hash``, to rule out collisions


def block_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """h_i = hash(h_{i-1}, tokens of block i). Deterministic for ints (no PYTHONHASHSEED)."""
    return hash((parent, token_ids))


# (tokens, block_size, index hash -> block id, block_hash) -> cached block ids, in order
PrefixLookup = Callable[[list[int], int, Mapping[int, int], Callable], list[int]]


class BlockManager:
    """Free list, reference counts, block tables and the prefix-cache index."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 prefix_lookup: PrefixLookup | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got "
                             f"{num_blocks} and {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_lookup = prefix_lookup
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order = least recently freed first: reusing those first keeps the
        # recently used prefixes cached longest (LRU eviction).
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0     # of those, tokens found

    # -- sizes ------------------------------------------------------------------------
    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    # -- prefix cache -----------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids that already hold a prefix of ``seq.tokens`` (full blocks only).

        At most (len - 1) // block_size blocks: the last token is always computed,
        because its logits give the next token.
        """
        if not self.enable_prefix_caching:
            return []
        tokens, bs = seq.tokens, self.block_size
        hits: list[int] = []
        if self.prefix_lookup is not None:
            found = self.prefix_lookup(list(tokens), bs, MappingProxyType(self.cached),
                                       block_hash)
            for i, bid in enumerate(list(found)[:(len(tokens) - 1) // bs]):
                ok = isinstance(bid, int) and 0 <= bid < self.num_blocks
                if not ok or self.blocks[bid].token_ids != tuple(tokens[i * bs:(i + 1) * bs]):
                    break  # the tokens decide, whatever the lookup said
                hits.append(bid)
            return hits
        h = None
        for i in range((len(tokens) - 1) // bs):
            ids = tuple(tokens[i * bs:(i + 1) * bs])
            h = block_hash(h, ids)
            bid = self.cached.get(h)
            if bid is None or self.blocks[bid].token_ids != ids:
                break
            hits.append(bid)
        return hits

    def commit(self, seq: Sequence) -> None:
        """Index the full, computed blocks of ``seq`` that are not indexed yet."""
        if not self.enable_prefix_caching:
            return
        bs, table = self.block_size, seq.block_table
        full = min(seq.num_computed_tokens // bs, len(table))
        start = full
        while start > 0 and self.blocks[table[start - 1]].hash is None:
            start -= 1  # usually 0 or 1 steps: only the newest full block is new
        if start == full:
            return
        tokens = seq.tokens
        h = self.blocks[table[start - 1]].hash if start else None
        for i in range(start, full):
            block = self.blocks[table[i]]
            block.token_ids = tuple(tokens[i * bs:(i + 1) * bs])
            block.hash = h = block_hash(h, block.token_ids)
            self.cached.setdefault(h, block.block_id)  # a twin computed earlier wins

    # -- allocation -------------------------------------------------------------------
    def can_admit(self, hits: list[int], num_tokens: int) -> bool:
        """Enough free blocks to hold ``num_tokens`` of a new sequence reusing ``hits``?"""
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # leave free list
        return self.blocks_needed(num_tokens) - len(hits) + revived <= len(self.free)

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Give a waiting sequence its cached prefix blocks (shared, ref_count += 1)."""
        assert not seq.block_table, "admit a sequence that holds no blocks"
        for bid in hits:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        self.prefix_queries += len(seq.prompt)
        self.prefix_hits += min(seq.num_cached_tokens, len(seq.prompt))

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Enough free blocks for ``seq`` to hold ``num_tokens`` tokens in total?"""
        return self.blocks_needed(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Append fresh blocks to ``seq.block_table`` until it holds ``num_tokens``."""
        need = self.blocks_needed(num_tokens) - len(seq.block_table)
        if need > len(self.free):
            raise RuntimeError(f"out of KV blocks: need {need}, {len(self.free)} free "
                               "(the scheduler should have checked can_grow)")
        for _ in range(need):
            seq.block_table.append(self._take_free_block())

    def _take_free_block(self) -> int:
        bid, _ = self.free.popitem(last=False)
        block = self.blocks[bid]
        if block.hash is not None:  # evict its old contents from the prefix index
            if self.cached.get(block.hash) == bid:
                del self.cached[block.hash]
            block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return bid

    def free_seq(self, seq: Sequence) -> None:
        """Drop ``seq``'s references; blocks nobody else holds go back to the free list."""
        # Tail blocks first, so that a prompt's later blocks are evicted before its
        # first ones (a shorter shared prefix stays cached longer).
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {bid} freed twice"
            if block.ref_count == 0:
                if block.hash is None or self.cached.get(block.hash) != bid:
                    block.hash, block.token_ids = None, ()  # nothing findable to keep
                self.free[bid] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    def check(self) -> None:
        """Assert the bookkeeping is consistent (used by tests)."""
        for b in self.blocks:
            assert b.ref_count >= 0
            assert (b.ref_count == 0) == (b.block_id in self.free), b
        for h, bid in self.cached.items():
            assert self.blocks[bid].hash == h
