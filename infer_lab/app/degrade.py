"""Graceful degradation: past a queue length, serve shorter answers instead of refusing.

Under overload a server can refuse (429), queue (latency grows without bound once
arrivals outpace service: Little's law L = lambda W) or *degrade*: do less work per
request so the same capacity serves more of them. Decode time is about proportional to
output tokens, so capping ``max_tokens`` at ``cap`` while ``n`` requests wait cuts the
work of each new request to at most

    (prompt + cap) / (prompt + max_tokens)

of what was asked, and the queue drains faster. The answer says it was degraded (a
``degraded`` field and an ``X-Degraded`` header), so a client can tell a short answer
from a finished one and retry later if it must have the whole thing.

The policy is plain data and a pure function of (queue length, requested max_tokens),
testable without a server; the server measures the queue and applies the decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Degradation", "DegradePolicy"]


@dataclass(frozen=True)
class Degradation:
    """What was changed, and why: the body's ``degraded`` field."""

    reason: str
    max_tokens: int  # what will run
    requested_max_tokens: int
    queue_length: int  # requests waiting ahead of this one when it was admitted
    queue_threshold: int

    def as_dict(self) -> dict:
        return asdict(self)

    def header(self) -> str:
        """The ``X-Degraded`` header: ``reason; max_tokens=N; queue_length=Q``."""
        return (f"{self.reason}; max_tokens={self.max_tokens}; "
                f"requested_max_tokens={self.requested_max_tokens}; "
                f"queue_length={self.queue_length}")


@dataclass(frozen=True)
class DegradePolicy:
    """Cap ``max_tokens`` at ``max_tokens_cap`` once ``queue_threshold`` requests wait.

    A request is degraded when at least ``queue_threshold`` requests are already waiting
    ahead of it and it asks for more than the cap; a request already within the cap
    runs as asked (there is nothing to take away, so it is not marked).
    """

    queue_threshold: int
    max_tokens_cap: int

    def __post_init__(self) -> None:
        if self.queue_threshold < 0:
            raise ValueError(f"queue_threshold must be >= 0, got {self.queue_threshold}")
        if self.max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be >= 1, got {self.max_tokens_cap}")

    def decide(self, queue_length: int, max_tokens: int) -> Degradation | None:
        """The degradation for a request asking ``max_tokens`` behind ``queue_length``
        waiting requests; None to serve it as asked."""
        if queue_length < self.queue_threshold or max_tokens <= self.max_tokens_cap:
            return None
        return Degradation("queue_length", self.max_tokens_cap, max_tokens, queue_length,
                           self.queue_threshold)
