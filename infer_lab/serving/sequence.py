"""Per-request state: a Sequence is a prompt, the tokens generated so far, and timings.

The state a serving engine keeps for one request is small and plain (nano-vllm's
``Sequence``, vLLM's ``Request``):

    tokens = prompt + output          everything the model has to have seen
    num_computed_tokens               how many of ``tokens`` already have K/V in the cache
    block_table                       the physical KV blocks holding those tokens, in order

A step computes ``tokens[num_computed : num_computed + n]``. When that reaches the end
of ``tokens`` the model's last logits give the next token, so prefill (n = whole
prompt), a chunk of a prefill (n < prompt) and decode (n = 1, the token just sampled)
are one operation. Preemption by recomputation is ``num_computed_tokens = 0``: the
prompt *and* the output so far are prefilled again later (Kwon et al. 2023, §4.5).

Plain Python, no torch (the scheduler and block manager import this): a seeded
request's random stream lives with the model runner that samples it.

Timings follow :mod:`infer_lab.metrics`: TTFT = first token - arrival,
TPOT = (last token - first token) / (n - 1).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ..sampling import GREEDY, Sampling
from ..validate import integer


class Status(Enum):
    WAITING = "waiting"      # queued: never run, or preempted and waiting to recompute
    RUNNING = "running"      # holds KV blocks and is scheduled every step
    FINISHED = "finished"    # done (see finish_reason); its blocks are freed


_ids = itertools.count()


class TokenConstraint(Protocol):
    """What may be sampled next for one request (constrained output:
    :class:`infer_lab.app.constrained.Cursor` is one); the model runner masks the logits
    with it and advances it with each token it samples."""

    def allowed(self, remaining: int) -> Any:
        """(V,) bool tensor: the tokens allowed now, with ``remaining`` tokens left."""
        ...

    def advance(self, token: int) -> None: ...


@dataclass(eq=False)  # identity equality: two requests with the same prompt are different
class Sequence:
    """One request: prompt, output, cache bookkeeping and timestamps (perf_counter s)."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling = GREEDY
    eos_id: int | None = None
    arrival_time: float | None = None  # None: now (time.perf_counter)
    seq_id: int = field(default_factory=lambda: next(_ids))
    constraint: TokenConstraint | None = None  # constrained output: masks each sample

    output: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "length", "eos", "abort" or "error"
    error: str | None = None  # why serving it failed (finish_reason "error")
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (last admission)
    block_table: list[int] = field(default_factory=list)
    num_preemptions: int = 0

    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None

    def __post_init__(self) -> None:
        self.prompt = list(self.prompt)
        if self.arrival_time is None:
            self.arrival_time = time.perf_counter()
        if not self.prompt:
            raise ValueError("empty prompt: give at least one token")
        self.max_tokens = integer("max_tokens", self.max_tokens, lo=1)
        if not isinstance(self.sampling, Sampling):
            raise ValueError(f"sampling must be an infer_lab.Sampling, got {self.sampling!r}")

    # -- tokens ---------------------------------------------------------------------
    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def last_token(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose K/V are not yet in the cache (1 while decoding)."""
        return len(self) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Only the last sampled token is pending: the next step is a decode step."""
        return bool(self.output) and self.num_pending_tokens == 1

    @property
    def max_len(self) -> int:
        """Length this request can reach: prompt + max_tokens."""
        return len(self.prompt) + self.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    def append_token(self, token: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.output.append(int(token))
        self.token_times.append(now)
        if self.first_token_time is None:
            self.first_token_time = now
        if self.eos_id is not None and token == self.eos_id:
            self.finish_reason = "eos"
        elif len(self.output) >= self.max_tokens:
            self.finish_reason = "length"

    # -- timings ----------------------------------------------------------------------
    @property
    def ttft(self) -> float | None:
        """Time to first token: arrival to first output token, queueing included."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None with fewer than 2 tokens)."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)

    @property
    def e2e(self) -> float | None:
        """Arrival to last token."""
        return None if not self.token_times else self.token_times[-1] - self.arrival_time

    @property
    def queue_time(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time
