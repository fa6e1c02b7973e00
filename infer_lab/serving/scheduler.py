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

Plain Python, no tensors: testable without a model.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

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


class Scheduler:
    """Waiting and running queues over a :class:`BlockManager`."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 512, chunked_prefill: bool = True):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: oldest first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
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
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            # Without chunking a running sequence is always decoding (n = 1): its whole
            # prefill ran in the step that admitted it.
            n = min(seq.num_pending_tokens, budget)
            while not self.bm.can_grow(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()  # newest first: it has waited least
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.chunks.append(self._schedule(seq, n))
                budget -= n
                i += 1
                continue
            break  # ``seq`` itself was preempted: everything after it is gone too
        if not out.preempted:  # admitting now would only be preempted back next step
            budget = self._admit(out, budget)
        return out

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
            self.bm.admit(seq, hits)
            seq.status = Status.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.perf_counter()
            self.running.append(seq)
            out.chunks.append(self._schedule(seq, n))
            budget -= n
        return budget

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
        seq.status = Status.FINISHED
        seq.finish_time = now
