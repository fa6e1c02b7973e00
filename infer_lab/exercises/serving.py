"""Exercises of lab 06 (serving).

* block_tables: PagedAttention's allocator (Kwon et al. 2023, vLLM). A sequence of
  ``n`` tokens holds ``ceil(n / block_size)`` blocks; growing it takes only the extra
  blocks, from the front of the free list; finishing it returns its blocks to the back
  of the free list, last block first (so a shared prompt's first blocks, the ones most
  likely to be reused by the prefix cache, are overwritten last).
* schedule_step: one step of iteration-level scheduling (Orca, Yu et al. 2022) with
  chunked prefill (Sarathi, Agrawal et al. 2023): running sequences first, oldest first,
  each taking ``min(pending, budget)`` tokens; then waiting prompts first come, first
  served, each taking ``min(prompt, budget)`` tokens while the budget lasts and fewer
  than ``max_num_seqs`` sequences run. Memory is assumed plentiful here: the engine
  carries the plan out under its block checks (``Engine(..., schedule_policy=...)``).
* prefix_lookup and preempt_victims (the prefix cache and preemption):
  :mod:`.serving_memory`. Lab 06's predictions are :data:`PREDICTIONS`.
"""

from __future__ import annotations

import random

from . import catalog, serving_memory
from .checker import Case, Exercise, Mistake
from .predictions import Prediction

LAB = catalog.SERVING  # the notebook's name


# -- references -------------------------------------------------------------------------
def block_tables(num_blocks: int, block_size: int,
                 ops: list[tuple[str, int, int]]) -> tuple[dict[int, list[int]], list[int]]:
    """Replay block operations; return (block table of each live sequence, free list).

    The free list starts as ``[0, 1, ..., num_blocks - 1]``. ``ops`` are
    ``("grow", seq_id, num_tokens)``: the sequence now holds ``num_tokens`` tokens in
    total (it may be new); ``("free", seq_id, 0)``: the sequence finished.
    """
    free = list(range(num_blocks))
    tables: dict[int, list[int]] = {}
    for op, seq_id, num_tokens in ops:
        if op == "grow":
            table = tables.setdefault(seq_id, [])
            need = -(-num_tokens // block_size) - len(table)  # ceil: a partial block counts
            for _ in range(max(need, 0)):
                table.append(free.pop(0))
        else:  # "free": last block first, to the back of the list (reused last)
            free.extend(reversed(tables.pop(seq_id)))
    return tables, free


def schedule_step(running: list[tuple[int, int]], waiting: list[tuple[int, int]],
                  token_budget: int, max_num_seqs: int) -> list[tuple[int, int]]:
    """The (seq_id, num_tokens) pairs that run this step, in schedule order.

    running: (seq_id, pending tokens) oldest first; pending is 1 for a decode, more for
    the rest of a chunked prefill. waiting: (seq_id, prompt tokens) in arrival order.
    """
    out, budget = [], token_budget
    for seq_id, pending in running:  # decodes (and unfinished prefills) go first
        if budget == 0:
            break
        n = min(pending, budget)
        out.append((seq_id, n))
        budget -= n
    num_seqs = len(running)
    for seq_id, prompt in waiting:  # then first come, first served, chunked to fit
        if budget == 0 or num_seqs >= max_num_seqs:
            break
        n = min(prompt, budget)
        out.append((seq_id, n))
        budget -= n
        num_seqs += 1
    return out


# -- wrong answers a learner might write ----------------------------------------------------
def _wrong_tables(need, release):
    """block_tables with the number of blocks to take, need(num_tokens, block_size,
    held), and the blocks a finished sequence gives back, release(table), swapped."""
    def replay(num_blocks, block_size, ops):
        free, tables = list(range(num_blocks)), {}
        for op, seq_id, n in ops:
            if op == "grow":
                table = tables.setdefault(seq_id, [])
                for _ in range(max(need(n, block_size, len(table)), 0)):
                    table.append(free.pop(0))
            else:
                free.extend(release(tables.pop(seq_id)))
        return tables, free
    return replay


def _extra_blocks(n, block_size, held):  # the right count: ceil, minus what is held
    return -(-n // block_size) - held


_tables_floor = _wrong_tables(lambda n, bs, held: n // bs - held, reversed)
_tables_no_return = _wrong_tables(_extra_blocks, lambda table: [])
_tables_realloc = _wrong_tables(lambda n, bs, held: -(-n // bs), reversed)  # all again
_tables_free_in_order = _wrong_tables(_extra_blocks, lambda table: table)


def _sched_no_budget(running, waiting, token_budget, max_num_seqs):
    out = list(running)
    out += waiting[:max(max_num_seqs - len(running), 0)]
    return out


def _sched_prefill_first(running, waiting, token_budget, max_num_seqs):
    out, budget, k = [], token_budget, len(running)
    for s, p in waiting:
        if budget == 0 or k >= max_num_seqs:
            break
        out.append((s, min(p, budget)))
        budget -= min(p, budget)
        k += 1
    for s, p in running:
        if budget == 0:
            break
        out.append((s, min(p, budget)))
        budget -= min(p, budget)
    return out


def _sched_skip_ahead(running, waiting, token_budget, max_num_seqs):
    out, budget = [], token_budget
    for s, p in running:
        if budget == 0:
            break
        out.append((s, min(p, budget)))
        budget -= min(p, budget)
    k = len(running)
    for s, p in waiting:  # takes whole prompts only, and lets later ones overtake
        if p <= budget and k < max_num_seqs:
            out.append((s, p))
            budget -= p
            k += 1
    return out


def _sched_no_max_seqs(running, waiting, token_budget, max_num_seqs):
    return schedule_step(running, waiting, token_budget, 10**9)


# -- cases ------------------------------------------------------------------------------
def _random_ops_case(rng: random.Random) -> Case:
    bs = rng.choice([1, 2, 4, 8, 16])
    num_blocks = rng.randint(8, 40)
    ops, lens, used = [], {}, 0
    for _ in range(rng.randint(1, 12)):
        if lens and rng.random() < 0.3:
            s = rng.choice(sorted(lens))
            ops.append(("free", s, 0))
            used -= -(-lens.pop(s) // bs)
            continue
        s = rng.choice(sorted(lens)) if lens and rng.random() < 0.5 else len(ops) + 100
        old = lens.get(s, 0)
        new = old + rng.randint(1, 3 * bs)
        extra = -(-new // bs) - -(-old // bs)
        if used + extra > num_blocks:
            continue  # the pool would run out: a scheduler would have refused this
        used += extra
        lens[s] = new
        ops.append(("grow", s, new))
    return Case((num_blocks, bs, ops))


def _random_sched_case(rng: random.Random) -> Case:
    running = [(i, 1 if rng.random() < 0.7 else rng.randint(2, 40))
               for i in range(rng.randint(0, 6))]
    waiting = [(100 + i, rng.randint(1, 60)) for i in range(rng.randint(0, 6))]
    return Case((running, waiting, rng.randint(1, 64), rng.randint(1, 10)))


EXERCISES = [
    Exercise(
        "block_tables", LAB, block_tables,
        fixed_cases=[
            Case((8, 4, [("grow", 0, 4)])),
            Case((8, 4, [("grow", 0, 5), ("grow", 1, 3)])),
            Case((8, 4, [("grow", 0, 6), ("grow", 0, 8), ("grow", 0, 9)])),
            Case((8, 4, [("grow", 0, 10), ("grow", 1, 4), ("free", 0, 0), ("grow", 2, 13)])),
            Case((6, 2, [("grow", 0, 3), ("grow", 1, 5), ("free", 0, 0), ("free", 1, 0)])),
            Case((4, 16, [("grow", 7, 1), ("grow", 7, 16), ("grow", 7, 17)])),
        ],
        random_case=_random_ops_case,
        hint="A sequence holds as many blocks as it takes to fit its tokens, a partly filled "
             "last block included; growing takes only the blocks it lacks, from the front of "
             "the free list. A finished sequence gives its blocks back to the end of the "
             "free list, its last block first.",
        code_hint="need = -(-num_tokens // block_size) - len(table); take free.pop(0) that many "
                  "times; on free: free.extend(reversed(tables.pop(seq_id)))",
        mistakes=[
            Mistake("floor", _tables_floor,
                    "A partly filled block is still a block: round the block count up, "
                    "not down."),
            Mistake("never returned", _tables_no_return,
                    "A finished sequence's blocks go back on the free list, or the pool "
                    "leaks until nothing can run."),
            Mistake("reallocated", _tables_realloc,
                    "Growing keeps the blocks the sequence already holds: take only the "
                    "ones it lacks."),
            Mistake("free order", _tables_free_in_order,
                    "Return the blocks last block first: a prompt's first blocks are the "
                    "ones other requests share, so they should be reused last."),
        ],
    ),
    Exercise(
        "schedule_step", LAB, schedule_step,
        fixed_cases=[
            Case(([(0, 1), (1, 1)], [(2, 5)], 16, 8)),
            Case(([(0, 1), (1, 1), (2, 1)], [(3, 10), (4, 3)], 8, 8)),
            Case(([], [(0, 4), (1, 20), (2, 2)], 12, 8)),
            Case(([(0, 1), (1, 7)], [(2, 3)], 5, 8)),
            Case(([(0, 1), (1, 1)], [(2, 2), (3, 2), (4, 2)], 64, 3)),
            Case(([(5, 1)], [], 4, 1)),
            Case(([(0, 1), (1, 1)], [(2, 30), (3, 1)], 10, 8)),
        ],
        random_case=_random_sched_case, kind="technique",
        hint="Running sequences first, oldest first, each taking what it has pending or "
             "what is left of the budget, whichever is less; then waiting prompts in arrival "
             "order, each cut to the budget left, until the budget is spent or max_num_seqs "
             "sequences (the running ones included) are in the step.",
        code_hint="out, budget = [], token_budget; for sid, p in running: if budget == 0: "
                  "break; n = min(p, budget); out.append((sid, n)); budget -= n; then the same "
                  "over waiting, also stopping once len(running) + admitted >= max_num_seqs",
        mistakes=[
            Mistake("no budget", _sched_no_budget,
                    "The step has a token budget: the tokens of all scheduled sequences "
                    "add up to at most token_budget (the last prompt is cut into a chunk)."),
            Mistake("prefill first", _sched_prefill_first,
                    "Running sequences go first: a decode costs one token, and making "
                    "running requests wait for new prompts stalls their token stream."),
            Mistake("skip ahead", _sched_skip_ahead,
                    "First come, first served: a prompt that does not fit whole is cut to "
                    "the budget left (chunked prefill), never overtaken by a later one."),
            Mistake("no seq limit", _sched_no_max_seqs,
                    "At most max_num_seqs sequences run, the running ones included: stop "
                    "admitting when running and admitted together reach it."),
        ],
    ),
    *serving_memory.EXERCISES,
]


# Predict, then measure: section 2's snapshot of the paged pool (lab 06 asks both).
PREDICTIONS = [
    Prediction(
        "serving_kv_bytes_held", LAB,
        "At the snapshot step, how many bytes of K/V do the blocks the running sequences "
        "hold take in the pool (K and V, every layer, a shared block counted once)? "
        "Within 25%.", "bytes", rel_tol=0.25,
        explain="bytes = blocks held x block_size x 2 (K and V) x n_layer x n_kv_head x "
                "head_dim x bytes per element. Each sequence holds ceil(n / block_size) "
                "blocks, its last one partly empty, and the shared prefix blocks are stored "
                "once however many tables point at them."),
    Prediction(
        "serving_contiguous_over_paged", LAB,
        "How many times more token slots does a contiguous cache reserve (max_seq_len per "
        "running sequence) than the paged blocks hold at that step (shared blocks counted "
        "once)? Within 25%.", "x", rel_tol=0.25,
        explain="A contiguous cache reserves max_seq_len slots per sequence whatever its "
                "length; the pool holds about the tokens themselves (less than block_size "
                "empty slots per sequence, the shared prefix once). The ratio is about "
                "max_seq_len over the mean length, more where the prefix is shared: that "
                "is the memory PagedAttention gives back to the batch."),
]
