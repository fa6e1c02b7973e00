"""What the serving engine and its baselines share: one declared interface, plain records.

:class:`~infer_lab.serving.engine.Engine` (continuous batching) and the request-level
baselines (:mod:`infer_lab.serving.baselines`) are driven by the same loops (the HTTP
server's engine thread, the load generator, the lab's traces, the benchmark), so they
declare what those loops may call, :class:`ServingEngine`, and nothing else is read:
no ``hasattr`` probes, no attribute that exists only because a caller reads it.

The records are plain data (no tensors), so a caller can keep, plot or send them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..sampling import GREEDY, Sampling
from .sequence import Sequence, TokenConstraint


@dataclass
class StepRecord:
    """What one step did: which sequences ran and how many tokens of each kind."""

    step: int
    start: float
    end: float
    seq_ids: list[int]
    num_prefill_tokens: int
    num_decode_tokens: int
    preempted_ids: list[int]
    finished_ids: list[int]
    num_running: int
    num_waiting: int
    blocks_used: int  # paged KV blocks held after the step (0 for the baselines)
    kv_bytes: int  # KV memory held after the step: blocks, or a baseline's contiguous cache

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens


@dataclass
class TokenOutput:
    """One new token of one request, as a server streams it; or, with ``error`` set and
    ``token`` None, the end of a request that failed while being served."""

    seq: Sequence
    token: int | None
    finished: bool
    error: str | None = None

    @property
    def seq_id(self) -> int:
        return self.seq.seq_id


@dataclass
class KVUsage:
    """KV memory right now: blocks, and bytes paged vs contiguous preallocation."""

    blocks_used: int
    blocks_total: int
    block_size: int
    bytes_per_token: int
    tokens: int  # tokens with K/V in the cache, summed over running requests
    num_running: int
    max_seq_len: int
    reserved_tokens: int = field(default=0)  # sum of prompt + max_tokens over running

    @property
    def paged_bytes(self) -> int:
        """Bytes held by allocated blocks (shared prefix blocks counted once)."""
        return self.blocks_used * self.block_size * self.bytes_per_token

    @property
    def token_bytes(self) -> int:
        """Bytes the stored tokens actually need."""
        return self.tokens * self.bytes_per_token

    @property
    def contiguous_bytes(self) -> int:
        """What a contiguous cache preallocated at max_seq_len per request would hold."""
        return self.num_running * self.max_seq_len * self.bytes_per_token

    @property
    def contiguous_request_bytes(self) -> int:
        """Contiguous preallocation sized to each request's prompt + max_tokens."""
        return self.reserved_tokens * self.bytes_per_token

    @property
    def usage(self) -> float:
        return self.blocks_used / self.blocks_total


@dataclass
class EngineLoad:
    """How busy an engine is right now, for metrics and admission control."""

    num_waiting: int
    num_running: int
    max_running: int  # requests it runs at once (max_num_seqs, or a batch size)
    kv_blocks_used: int = 0  # paged KV blocks held (0 for a contiguous cache)
    kv_blocks_total: int = 0


class ServingEngine(Protocol):
    """The calls every engine answers; the serving loops use these alone."""

    model: Any  # the Transformer it serves (its config: the logits' width)
    records: list[StepRecord]  # one per step that ran
    num_steps: int
    num_forward_faults: int  # model forwards that raised (the engine retried them)

    def add_request(self, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY,
                    eos_id: int | None = None, arrival_time: float | None = None, *,
                    constraint: TokenConstraint | None = None) -> Sequence: ...

    def abort(self, seq_id: int) -> None: ...

    def has_unfinished(self) -> bool: ...

    def step(self) -> list[TokenOutput]: ...

    def run(self) -> None: ...

    def generate(self, prompts: list[list[int]], max_tokens: int,
                 sampling: Sampling = GREEDY, eos_id: int | None = None
                 ) -> list[list[int]]: ...

    def load(self) -> EngineLoad: ...

    def kv_usage(self) -> KVUsage | None:
        """Paged KV memory now; None for an engine without a block pool."""
        ...

    def set_draining(self, draining: bool) -> None:
        """No more arrivals are coming (True) or they may again (False): a policy that
        waits for a full batch may then start a partial one."""
        ...
