"""Iteration-level scheduling: decide, every step, which tokens of which requests to run.

Orca (Yu et al. 2022) schedules per *iteration* instead of per request: a request
joins the batch the step after it arrives and leaves the step it finishes, so short
requests never wait for long ones (continuous batching). Each step here picks, under a
token budget,

    sum over scheduled sequences of n_s  <=  max_num_batched_tokens,
    n_s = 1 for a decode, up to the rest of the prompt for a prefill,

first for the running sequences (oldest first), then for waiting ones (first come,
first served: the queue is never overtaken). With chunked prefill (Agrawal et al.
2024, Sarathi-Serve) a long prompt is cut into chunks that fill the budget left over by
the decodes, so one long prompt cannot stall every running decode for a whole step.

Memory policy (vLLM, Kwon et al. 2023): a waiting request is admitted only if free
KV blocks can hold what it computes now. When a running request needs a new block and
none is free, the *newest* running request is preempted: its blocks are freed and it
goes back to the front of the waiting queue, to be recomputed (prompt + output so far)
later. Every request fits the pool alone (checked at submit), so the oldest one always
makes progress and the loop cannot livelock.

Both policies plug in from outside (lab 06 runs the learner's): ``schedule_policy`` plans
a step from plain (seq_id, tokens) pairs and the scheduler carries the plan out under the
memory checks; ``preemption`` picks the victims from (seq_id, priority, blocks freed)
triples (vLLM's priority policy: lowest priority first, newest among equals). Without
them the built-in rules above run.

Plain Python, no tensors: testable without a model.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class ScheduledChunk:
    """Compute ``seq.tokens[start : start + num_tokens]`` this step."""

    seq: Sequence
    start: int
    num_tokens: int
    is_decode: bool
    samples: bool  # reaches the end of the sequence, so its logits give the next token


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if not c.is_decode)

    @property
    def num_decode_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks if c.is_decode)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class StepPolicy(Protocol):
    """Plan one step (Orca's iteration, Sarathi's chunks) from plain data.

    running: (seq_id, pending tokens), oldest first; waiting: (seq_id, tokens to compute)
    in queue order. Returns the (seq_id, num_tokens) pairs to run, in schedule order,
    within ``token_budget`` tokens and ``max_num_seqs`` sequences (lab 06's
    ``schedule_step`` is one).
    """

    def __call__(self, running: list[tuple[int, int]], waiting: list[tuple[int, int]],
                 token_budget: int, max_num_seqs: int) -> list[tuple[int, int]]: ...


class PreemptionPolicy(Protocol):
    """Whom to preempt so that ``growing`` gets ``need`` blocks, ``free_blocks`` free now.

    running: (seq_id, priority, blocks only it holds) in admission order; lower priority
    values are more important. Returns seq_ids in preemption order (lab 06's
    ``preempt_victims`` is one).
    """

    def __call__(self, running: list[tuple[int, int, int]], growing: int, free_blocks: int,
                 need: int) -> list[int]: ...


class Scheduler:
    """Waiting and running queues over a :class:`BlockManager`."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 512, chunked_prefill: bool = True,
                 schedule_policy: StepPolicy | None = None,
                 preemption: PreemptionPolicy | None = None):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if schedule_policy is not None and not chunked_prefill:
            raise ValueError("a schedule_policy plans chunked prefills: it needs "
                             "chunked_prefill=True")
        self.schedule_policy, self.preemption = schedule_policy, preemption
        self.priority: dict[int, int] = {}  # seq_id -> priority (lower: more important)
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: oldest first
        self.num_preemptions = 0

    def add(self, seq: Sequence, priority: int = 0) -> None:
        bs, n = self.bm.block_size, self.bm.num_blocks
        if self.bm.blocks_needed(seq.max_len) > n:
            raise ValueError(
                f"request needs up to {seq.max_len} tokens of KV ({len(seq.prompt)} prompt + "
                f"{seq.max_tokens} max_tokens) but the whole pool holds {n * bs} "
                f"({n} blocks of {bs}); raise num_blocks or lower max_tokens")
        if not self.chunked_prefill and len(seq.prompt) > self.max_num_batched_tokens:
            raise ValueError(
                f"prompt of {len(seq.prompt)} tokens exceeds max_num_batched_tokens="
                f"{self.max_num_batched_tokens} without chunked prefill; enable "
                "chunked_prefill or raise the budget")
        seq.status = Status.WAITING
        if priority:
            self.priority[seq.seq_id] = priority
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        if self.schedule_policy is not None:
            return self._schedule_planned()
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            # Without chunking a running sequence is always decoding (n = 1): its whole
            # prefill ran in the step that admitted it.
            n = min(seq.num_pending_tokens, budget)
            if self._make_room(seq, n, out):
                out.chunks.append(self._schedule(seq, n))
            # a victim may sit before ``seq`` (a policy's choice): recount both
            i = self.running.index(seq) + 1 if seq in self.running else i
            budget = self.max_num_batched_tokens - sum(c.num_tokens for c in out.chunks)
        if not out.preempted:  # admitting now would only be preempted back next step
            budget = self._admit(out, budget)
        return out

    def _schedule_planned(self) -> SchedulerOutput:
        """Run ``schedule_policy``'s plan: the same memory checks, the plan's token counts."""
        out, bs = SchedulerOutput(), self.bm.block_size
        room = max(self.max_num_seqs - len(self.running), 0)
        heads = list(itertools.islice(self.waiting, room))  # nobody further back can run
        cached = {s.seq_id: len(self.bm.match_prefix(s)) * bs for s in heads}
        plan = self.schedule_policy(
            [(s.seq_id, s.num_pending_tokens) for s in self.running],
            [(s.seq_id, len(s) - cached[s.seq_id]) for s in heads],
            self.max_num_batched_tokens, self.max_num_seqs)
        running = {s.seq_id: s for s in self.running}
        waiting = {s.seq_id: s for s in heads}
        self._check_plan(plan, running, waiting, cached)
        for sid, n in plan:
            seq = running.get(sid)
            if seq is not None and seq in self.running and self._make_room(seq, n, out):
                out.chunks.append(self._schedule(seq, n))
        if out.preempted:
            return out
        for sid, n in plan:
            seq = waiting.get(sid)
            if seq is None:
                continue
            hits = self.bm.match_prefix(seq)  # again: this step's growth may have evicted
            n = min(n, len(seq) - len(hits) * bs)
            if not self.bm.can_admit(hits, len(hits) * bs + n):
                break
            self.waiting.remove(seq)
            self._start(seq, hits, n, out)
        return out

    def _check_plan(self, plan, running: dict, waiting: dict, cached: dict) -> None:
        """A plan the engine can carry out, or a ValueError that says what is wrong."""
        seen: set[int] = set()
        for sid, n in plan:
            seq = running.get(sid) or waiting.get(sid)
            if seq is None or sid in seen:
                raise ValueError(f"schedule_policy planned seq {sid} "
                                 f"{'twice' if sid in seen else 'which is not queued'}")
            most = seq.num_pending_tokens if sid in running else len(seq) - cached[sid]
            if not 1 <= n <= most:
                raise ValueError(f"schedule_policy gave seq {sid} {n} tokens; it has {most}")
            seen.add(sid)
        if sum(n for _, n in plan) > self.max_num_batched_tokens or \
                len(running) + sum(1 for sid, _ in plan if sid in waiting) > self.max_num_seqs:
            raise ValueError(f"schedule_policy's plan {plan} exceeds the token budget "
                             f"{self.max_num_batched_tokens} or {self.max_num_seqs} sequences")

    def _make_room(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Preempt until ``seq`` can hold ``n`` more tokens; False if ``seq`` itself went."""
        while not self.bm.can_grow(seq, seq.num_computed_tokens + n):
            for victim in self._victims(seq, n):
                if self.bm.can_grow(seq, seq.num_computed_tokens + n):
                    break
                self.running.remove(victim)
                out.chunks = [c for c in out.chunks if c.seq is not victim]
                self._preempt(victim, out)
                if victim is seq:
                    return False
        return True

    def _victims(self, seq: Sequence, n: int) -> list[Sequence]:
        if self.preemption is None:
            return [self.running[-1]]  # newest first: it has waited least
        by_id = {s.seq_id: s for s in self.running}
        view = [(s.seq_id, self.priority.get(s.seq_id, 0),
                 sum(1 for b in s.block_table if self.bm.blocks[b].ref_count == 1))
                for s in self.running]
        need = self.bm.blocks_needed(seq.num_computed_tokens + n) - len(seq.block_table)
        ids = self.preemption(view, seq.seq_id, self.bm.num_free_blocks, need)
        victims = [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
        if not victims:
            raise RuntimeError(f"preemption policy chose nobody among the running {list(by_id)}"
                               f" while seq {seq.seq_id} needs {need} blocks")
        return victims

    def _admit(self, out: SchedulerOutput, budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.bm.match_prefix(seq)
            cached = len(hits) * self.bm.block_size
            n = len(seq) - cached
            if n > budget:
                if self.chunked_prefill:
                    n = budget
                elif out.chunks:
                    break  # FCFS: nobody overtakes the head of the queue
                # else: a recomputation (prompt + output) longer than the budget runs
                # alone, over budget; refusing it would stall it forever.
            if not self.bm.can_admit(hits, cached + n):
                break
            self.waiting.popleft()
            self._start(seq, hits, n, out)
            budget -= n
        return budget

    def _start(self, seq: Sequence, hits: list[int], n: int, out: SchedulerOutput) -> None:
        """Admit a waiting sequence (already off the queue) and schedule its first chunk."""
        self.bm.admit(seq, hits)
        seq.status = Status.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = time.perf_counter()
        self.running.append(seq)
        out.chunks.append(self._schedule(seq, n))

    def _schedule(self, seq: Sequence, n: int) -> ScheduledChunk:
        start = seq.num_computed_tokens
        self.bm.grow(seq, start + n)
        return ScheduledChunk(seq, start, n, is_decode=seq.is_decoding and n == 1,
                              samples=start + n == len(seq))

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.bm.free_seq(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)  # first in line again: it arrived before the rest
        out.preempted.append(seq)

    # -- after the model ran ------------------------------------------------------------
    def update(self, out: SchedulerOutput, new_tokens: dict[int, int],
               now: float | None = None) -> list[Sequence]:
        """Advance computed counts, append sampled tokens, retire finished sequences.

        new_tokens: seq_id -> token for every chunk that ``samples``. Returns the
        sequences that finished this step.
        """
        now = time.perf_counter() if now is None else now
        finished = []
        for c in out.chunks:
            seq = c.seq
            if seq.status is not Status.RUNNING:
                continue  # aborted while the step ran
            seq.num_computed_tokens = c.start + c.num_tokens
            self.bm.commit(seq)
            if c.samples:
                seq.append_token(new_tokens[seq.seq_id], now)
                if seq.finish_reason is not None:
                    self._finish(seq, now)
                    finished.append(seq)
        return finished

    def abort(self, seq: Sequence, reason: str = "abort") -> None:
        """Cancel a request (client went away; or ``reason="error"``: serving it failed):
        free its blocks now."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.finish_reason = reason
        self._finish(seq, time.perf_counter())

    def _finish(self, seq: Sequence, now: float) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.bm.free_seq(seq)
        self.priority.pop(seq.seq_id, None)
        seq.status = Status.FINISHED
        seq.finish_time = now
