"""Exercises of lab 06 (serving) on the KV pool's memory: the prefix cache and preemption.

* prefix_lookup: vLLM's automatic prefix caching (SGLang's RadixAttention, Zheng et al.
  2024, is the tree-shaped version). A full block is named by everything up to its end,
  ``h_i = block_hash(h_{i-1}, tokens of block i)`` with ``h_{-1} = None``; the hits are the
  cached blocks of that chain up to the first miss, and never the block that holds the
  prompt's last token (its logits give the next token, so it is always computed): at most
  ``(len - 1) // block_size`` blocks.
* preempt_victims: vLLM's recompute preemption (Kwon et al. 2023, section 4.5) with its
  priority policy: when a running sequence needs blocks and too few are free, preempt the
  lowest-priority running sequence (the largest priority value), the most recently
  admitted among equals, until enough blocks are free, or until the growing sequence
  itself was the one preempted (then it waits, and nobody else needs to give way).

Both plug into the engine (``Engine(..., prefix_lookup=..., preemption=...)``), and the
tests cross-check them against :mod:`infer_lab.serving`'s block manager and scheduler.
"""

from __future__ import annotations

import random

from ..serving.block_manager import block_hash as _block_hash
from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.SERVING


# -- references -------------------------------------------------------------------------
def prefix_lookup(tokens: list[int], block_size: int, cached: dict[int, int],
                  block_hash) -> list[int]:
    """Block ids of the cached prefix of ``tokens``: full blocks, chained hashes, up to
    the first miss, leaving the last token to compute. ``cached``: hash -> block id."""
    hits, h = [], None
    for i in range((len(tokens) - 1) // block_size):  # never the block of the last token
        h = block_hash(h, tuple(tokens[i * block_size:(i + 1) * block_size]))  # chained
        bid = cached.get(h)
        if bid is None:
            break  # everything after a miss follows a prefix the cache does not hold
        hits.append(bid)
    return hits


def preempt_victims(running: list[tuple[int, int, int]], growing: int, free_blocks: int,
                    need: int) -> list[int]:
    """seq_ids to preempt, in order, so that ``growing`` gets ``need`` free blocks.

    running: (seq_id, priority, blocks it frees when preempted), admission order (oldest
    first); a lower priority value is more important.
    """
    pool, victims = list(running), []
    while free_blocks < need:
        # lowest priority first; among equals the newest (latest in admission order)
        k = max(range(len(pool)), key=lambda j: (pool[j][1], j))
        seq_id, _, blocks = pool.pop(k)
        victims.append(seq_id)
        free_blocks += blocks
        if seq_id == growing:
            break  # it gave its own blocks back: it waits, nobody else has to go
    return victims


# -- wrong answers a learner might write ----------------------------------------------------
def _lookup(blocks, parent, stop):
    """prefix_lookup with the number of blocks, the parent of each hash and whether a
    miss stops the walk swapped."""
    def lookup(tokens, block_size, cached, block_hash):
        hits, h = [], None
        for i in range(blocks(len(tokens), block_size)):
            h = block_hash(parent(h), tuple(tokens[i * block_size:(i + 1) * block_size]))
            bid = cached.get(h)
            if bid is None:
                if stop:
                    break
                continue
            hits.append(bid)
        return hits
    return lookup


def _all_but_last(n, bs):
    return (n - 1) // bs


_lookup_no_parent = _lookup(_all_but_last, lambda h: None, stop=True)
_lookup_past_miss = _lookup(_all_but_last, lambda h: h, stop=False)
_lookup_whole_prompt = _lookup(lambda n, bs: n // bs, lambda h: h, stop=True)


def _victims(key, stop_at_self=True, spare_self=False, strict=True):
    """preempt_victims with the order, the stop rules and the comparison swapped."""
    def choose(running, growing, free_blocks, need):
        pool = [r for r in running if not (spare_self and r[0] == growing)]
        victims = []
        while pool and (free_blocks < need if strict else free_blocks <= need):
            k = max(range(len(pool)), key=lambda j: key(pool[j][1], j))
            seq_id, _, blocks = pool.pop(k)
            victims.append(seq_id)
            free_blocks += blocks
            if stop_at_self and seq_id == growing:
                break
        return victims
    return choose


_victims_oldest = _victims(lambda prio, j: (prio, -j))
_victims_top_priority = _victims(lambda prio, j: (-prio, j))
_victims_no_priority = _victims(lambda prio, j: j)
_victims_past_self = _victims(lambda prio, j: (prio, j), stop_at_self=False)
_victims_spare_self = _victims(lambda prio, j: (prio, j), spare_self=True)
_victims_one_more = _victims(lambda prio, j: (prio, j), strict=False)


# -- cases ------------------------------------------------------------------------------
def _table(prompts: list[list[int]], block_size: int, drop: tuple[int, ...] = ()
           ) -> dict[int, int]:
    """The index after computing ``prompts``: hash of each full block -> block id (ids in
    order of first appearance; a twin computed earlier wins), less the entries at the
    positions in ``drop`` (blocks evicted since)."""
    table: dict[int, int] = {}
    for p in prompts:
        h = None
        for i in range(len(p) // block_size):
            h = _block_hash(h, tuple(p[i * block_size:(i + 1) * block_size]))
            table.setdefault(h, len(table))
    keys = list(table)
    for j in drop:
        if j < len(keys):
            table.pop(keys[j])
    return table


_A = [1, 2, 3, 4, 5, 6]
LOOKUP_CASES = [
    Case(([1, 2, 3, 4, 5, 6, 7], 2, _table([_A], 2), _block_hash)),  # all three blocks hit
    Case(([1, 2, 3, 4, 5, 6], 2, _table([_A], 2), _block_hash)),  # the last block: computed
    Case(([1, 2, 3, 4, 5, 6, 7], 2, _table([_A], 2, drop=(1,)), _block_hash)),  # evicted
    Case(([1, 2, 3, 4, 0, 0, 0], 2, _table([[3, 4, 9, 9], [1, 2]], 2), _block_hash)),
    Case(([9, 1, 2, 3, 4, 5, 6], 2, _table([_A], 2), _block_hash)),  # first block misses
    Case(([1, 2, 3], 4, _table([[1, 2, 3, 4]], 4), _block_hash)),  # shorter than a block
    Case(([5, 5, 5, 5, 5, 5, 5], 2, _table([[5, 5, 5, 5, 5, 5]], 2), _block_hash)),
    Case(([1, 2, 3, 4, 5, 6, 7, 8, 9], 3, _table([_A, [1, 2, 3, 7, 7, 7]], 3), _block_hash)),
]


def _random_lookup_case(rng: random.Random) -> Case:
    bs = rng.choice([1, 2, 3, 4])
    vocab = rng.randint(2, 4)  # few token values: equal blocks after different prefixes
    seen = [[rng.randrange(vocab) for _ in range(rng.randint(0, 16))]
            for _ in range(rng.randint(1, 3))]
    n_full = sum(len(p) // bs for p in seen)
    drop = tuple(j for j in range(n_full) if rng.random() < 0.15)
    base = rng.choice(seen)
    query = base[:rng.randint(0, len(base))] + [rng.randrange(vocab)
                                                 for _ in range(rng.randint(1, 8))]
    return Case((query, bs, _table(seen, bs, drop), _block_hash))


VICTIM_CASES = [
    Case(([(0, 0, 2), (1, 0, 2), (2, 0, 2)], 0, 0, 1)),  # equal priority: the newest goes
    Case(([(0, 0, 1), (1, 0, 1), (2, 0, 1)], 0, 0, 2)),  # two must go
    Case(([(0, 0, 3), (1, 0, 3)], 1, 0, 1)),  # the newest is the growing one: it waits
    Case(([(0, 0, 3), (1, 0, 1)], 1, 0, 2)),  # it freed too little, but it waits: stop
    Case(([(0, 0, 2), (1, 2, 2), (2, 1, 2)], 2, 0, 1)),  # the least important goes first
    Case(([(0, 0, 2), (1, 2, 2), (2, 1, 2)], 0, 0, 2)),  # 0 + 2 = need: one is enough
    Case(([(0, 0, 4)], 0, 2, 2)),  # enough free already: nobody
    Case(([(3, 0, 1), (7, 1, 0), (5, 1, 2), (4, 0, 2)], 3, 0, 3)),
    Case(([(0, 0, 0), (1, 0, 0), (2, 0, 5)], 2, 0, 1)),  # shared blocks free nothing
]


def _random_victim_case(rng: random.Random) -> Case:
    n = rng.randint(1, 6)
    ids = rng.sample(range(20), n)
    levels = rng.choice([1, 2, 3])  # 1: all equal, as without priorities
    running = [(i, rng.randrange(levels), rng.randint(0, 4)) for i in ids]
    return Case((running, rng.choice(ids), rng.randint(0, 3), rng.randint(1, 6)))


EXERCISES = [
    Exercise(
        "preempt_victims", LAB, preempt_victims,
        fixed_cases=VICTIM_CASES, random_case=_random_victim_case, n_random=40,
        kind="technique",
        hint="While the free blocks do not cover the need, the running sequence least "
             "worth keeping gives its blocks back: the lowest priority (the largest "
             "priority number), and among equals the one admitted last, since it has done "
             "the least work. Stop as soon as the free blocks cover the need, or once the "
             "growing sequence itself was taken (it waits now, so nobody else has to go).",
        code_hint="pool, out = list(running), []; while free_blocks < need: k = max(range(len("
                  "pool)), key=lambda j: (pool[j][1], j)); sid, _, b = pool.pop(k); "
                  "out.append(sid); free_blocks += b; if sid == growing: break",
        mistakes=[
            Mistake("spares itself", _victims_spare_self,
                    "The growing sequence is a candidate too: when it is the least worth "
                    "keeping, it is the one that waits."),
            Mistake("oldest first", _victims_oldest,
                    "Among equal priorities the newest admitted goes first: the oldest has "
                    "the most work done, and preempting it throws that work away."),
            Mistake("priority ignored", _victims_no_priority,
                    "Newest first is the rule only among equal priorities: a low-priority "
                    "sequence goes before any more important one, however old."),
            Mistake("most important first", _victims_top_priority,
                    "A smaller priority number is more important: preempt the largest "
                    "number first."),
            Mistake("past itself", _victims_past_self,
                    "Once the growing sequence itself is preempted it no longer needs the "
                    "blocks: stop there instead of preempting more."),
            Mistake("one too many", _victims_one_more,
                    "Free blocks equal to the need are enough: stop as soon as they cover it."),
        ],
    ),
    Exercise(
        "prefix_lookup", LAB, prefix_lookup,
        fixed_cases=LOOKUP_CASES, random_case=_random_lookup_case, n_random=40,
        kind="technique",
        hint="Walk the prompt's full blocks from the first: name each by the hash of the "
             "previous block's name together with its own tokens (the first has no parent), "
             "so a name stands for the whole prefix up to that block's end. Look each name "
             "up in the index and keep the block ids until the first miss. Leave the block "
             "that holds the prompt's last token out: its logits give the next token.",
        code_hint="hits, h = [], None; for i in range((len(tokens) - 1) // block_size): h = "
                  "block_hash(h, tuple(tokens[i * block_size:(i + 1) * block_size])); bid = "
                  "cached.get(h); if bid is None: break; hits.append(bid)",
        mistakes=[
            Mistake("no parent", _lookup_no_parent,
                    "A block's name must include everything before it: hash it with the "
                    "previous block's hash, or equal tokens after a different prefix would "
                    "hit (and other K/V would be served), and cached chains would miss."),
            Mistake("past a miss", _lookup_past_miss,
                    "Stop at the first miss: the blocks after it must be computed anyway "
                    "(their K/V depend on the missing block), so a later hit cannot be used."),
            Mistake("whole prompt", _lookup_whole_prompt,
                    "Leave the block holding the prompt's last token out (and partial blocks "
                    "never hit): that token is always computed, because its logits give the "
                    "first output token."),
        ],
    ),
]
