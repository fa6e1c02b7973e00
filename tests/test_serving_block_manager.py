"""Block manager: allocation, reference counts, prefix caching, eviction (no model)."""

import pytest

from infer_lab.serving.block_manager import BlockManager
from infer_lab.serving.sequence import Sequence


def seq(tokens, max_tokens=4):
    return Sequence(list(tokens), max_tokens)


def admit(bm, s, num_tokens=None):
    hits = bm.match_prefix(s)
    n = len(s) if num_tokens is None else num_tokens
    assert bm.can_admit(hits, n)
    bm.admit(s, hits)
    bm.grow(s, n)
    return hits


def compute_all(bm, s):
    s.num_computed_tokens = len(s)
    bm.commit(s)


def test_blocks_grow_one_at_a_time_and_free_back():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(range(5))
    admit(bm, s)
    assert len(s.block_table) == 2 and bm.num_free_blocks == 6
    bm.grow(s, 8)
    assert len(s.block_table) == 2  # 8 tokens still fit two blocks of 4
    bm.grow(s, 9)
    assert len(s.block_table) == 3 and bm.num_used_blocks == 3
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == []
    bm.check()


def test_grow_refuses_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=4)
    s = seq(range(8))
    admit(bm, s)
    assert not bm.can_grow(s, 9)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.grow(s, 9)


def test_shared_prefix_blocks_are_reference_counted():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(10)))
    admit(bm, a)
    compute_all(bm, a)  # blocks 0 and 1 are full -> indexed
    b = seq(list(range(8)) + [50, 51, 52])
    hits = admit(bm, b)
    assert hits == a.block_table[:2]
    assert b.num_computed_tokens == b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in hits] == [2, 2]
    assert bm.num_used_blocks == 3 + 1  # a: 3 blocks, b: 2 shared + 1 own
    bm.free_seq(a)
    assert [bm.blocks[i].ref_count for i in hits] == [1, 1]
    bm.free_seq(b)
    assert bm.num_free_blocks == 16
    bm.check()


def test_last_token_is_never_served_from_cache():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(range(8))
    admit(bm, a)
    compute_all(bm, a)
    b = seq(range(8))  # the same 8 tokens: only the first block may be reused
    assert len(bm.match_prefix(b)) == 1


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(range(9))
    admit(bm, a)
    compute_all(bm, a)
    bm.free_seq(a)
    b = seq(list(range(8)) + [7, 7])
    hits = bm.match_prefix(b)
    assert len(hits) == 2  # found although nobody holds them
    assert bm.can_admit(hits, 10)
    # Fill the pool with something else: the cached blocks are evicted, oldest first.
    c = seq([99] * 16)
    admit(bm, c)
    assert bm.match_prefix(b) == [] and not bm.cached
    bm.free_seq(c)
    bm.check()


def test_a_block_matches_only_after_the_same_prefix():
    """h_i chains h_{i-1}: equal tokens at another position hold other K/V (RoPE)."""
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq([1, 2, 3, 4, 5])
    admit(bm, a)
    compute_all(bm, a)
    assert bm.match_prefix(seq([3, 4, 9])) == []
    assert bm.match_prefix(seq([1, 2, 3, 4, 9])) == a.block_table[:2]


def test_prefix_caching_off_shares_nothing():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    a = seq(range(6))
    admit(bm, a)
    compute_all(bm, a)
    assert bm.match_prefix(seq(range(6))) == [] and not bm.cached


def test_hash_collision_is_checked_against_tokens():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = seq([1, 2, 3])
    admit(bm, a)
    compute_all(bm, a)
    (bid,) = bm.cached.values()
    bm.blocks[bid].token_ids = (9, 9)  # pretend another block hashed to the same value
    assert bm.match_prefix(seq([1, 2, 3])) == []


def test_bad_sizes():
    with pytest.raises(ValueError):
        BlockManager(0, 16)
    with pytest.raises(ValueError):
        BlockManager(4, 0)
