"""Per-API-key rate limiting with token buckets (the leaky-bucket family, Turner 1986).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second. A
request that costs ``c`` passes if the bucket holds at least ``c``, and takes them:

    level(t) = min(burst, level(t0) + rate * (t - t0))
    pass  <=>  level(t) >= c,        else retry after (c - level(t)) / rate seconds.

So over any window of T seconds a key gets at most ``burst + rate * T`` tokens: a burst
up front, then the steady rate. A request costing more than ``burst`` can never pass,
however long it waits; that is refused with :class:`NeverFits` rather than a
``Retry-After`` that would be a lie.

Fairness. Each key has its own bucket, so one key's flood empties only its own bucket:
another key's requests still find theirs full. An optional *global* bucket caps the
whole server (keys are self-declared, so a client can make up a new key per request;
the global bucket is what bounds that). A request must fit both buckets and is charged
to both or to neither: a refused request costs nothing, so a flooding client is not
punished twice and a polite one never loses tokens to a refusal. The global bucket is
first come, first served, so it should be sized above ``per_key.rate`` times the number
of keys expected to be busy at once; then no single key can drain it alone.

The cost of a request is 1 (requests/s, OpenAI's RPM) or an estimate of its tokens,
prompt + max_tokens (OpenAI's TPM counts max_tokens too: it is known at admission,
the real output length is not).

Time comes from an injectable clock (or a ``now`` argument), so tests drive it; the
limiter holds no global state and is not thread-safe (the server calls it from its
event-loop thread only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

__all__ = ["BucketConfig", "Decision", "NeverFits", "RateLimitConfig",
           "RateLimiter", "TokenBucket"]

_EPS = 1e-9  # float slack: a refill of exactly the cost must pass


class NeverFits(ValueError):
    """A request costs more than a bucket can ever hold: waiting will not help."""


@dataclass(frozen=True)
class BucketConfig:
    """``rate`` tokens per second, at most ``burst`` tokens saved up."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of tokens/s, got {self.rate}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be >= 1 token, got {self.burst}")


class TokenBucket:
    """One bucket's state: its level at the time it was last brought up to date."""

    def __init__(self, config: BucketConfig, now: float):
        self.config = config
        self.level = config.burst  # a new key starts with its burst
        self.last = now

    def refill(self, now: float) -> None:
        # A clock that steps back (a test, an NTP jump) must not drain the bucket.
        if now > self.last:
            self.level = min(self.config.burst, self.level + (now - self.last) *
                             self.config.rate)
            self.last = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` tokens are there (0 if now); the bucket is refilled."""
        if cost > self.config.burst + _EPS:
            raise NeverFits(f"a request costing {cost:g} can never fit a bucket of burst "
                            f"{self.config.burst:g}")
        self.refill(now)
        return max(0.0, (cost - self.level) / self.config.rate) \
            if self.level + _EPS < cost else 0.0

    def take(self, cost: float) -> None:
        self.level -= cost

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.level >= self.config.burst - _EPS


class Decision(NamedTuple):
    """``ok``: admitted; else retry after ``retry_after`` seconds (0.0 when ok)."""

    ok: bool
    retry_after: float


@dataclass(frozen=True)
class RateLimitConfig:
    """A bucket per key, an optional bucket over all keys, and what a request costs.

    ``cost="requests"``: each request costs 1 (rate is requests/s). ``cost="tokens"``:
    a request costs prompt + max_tokens (rate is tokens/s). ``max_keys``: idle keys
    whose buckets are full again are forgotten past this many (a full bucket is exactly
    a new one, so forgetting it changes nothing).
    """

    per_key: BucketConfig
    global_bucket: BucketConfig | None = None
    cost: Literal["requests", "tokens"] = "requests"
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        if self.cost not in ("requests", "tokens"):
            raise ValueError(f"cost must be 'requests' or 'tokens', got {self.cost!r}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys}")

    @classmethod
    def simple(cls, rate: float, burst: float, **kw) -> RateLimitConfig:
        return cls(BucketConfig(rate, burst), **kw)


@dataclass
class RateLimiter:
    """Token buckets keyed by API key: ``try_acquire(key, cost) -> (ok, retry_after)``."""

    config: RateLimitConfig
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    shared: TokenBucket | None = None
    num_refused: int = 0

    def __post_init__(self) -> None:
        if self.config.global_bucket is not None and self.shared is None:
            self.shared = TokenBucket(self.config.global_bucket, self.clock())

    def cost(self, prompt_tokens: int, max_tokens: int) -> float:
        """What a request is charged under this config's cost rule."""
        return 1.0 if self.config.cost == "requests" else float(prompt_tokens + max_tokens)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.config.max_keys:
                self.forget_idle(now)
            bucket = self.buckets[key] = TokenBucket(self.config.per_key, now)
        return bucket

    def try_acquire(self, key: str, cost: float = 1.0, now: float | None = None) -> Decision:
        """Admit (and charge) a request of ``cost`` for ``key``, or say how long to wait.

        Raises :class:`NeverFits` if ``cost`` exceeds a bucket's burst, ValueError for
        a cost that is not a positive number.
        """
        if not (math.isfinite(cost) and cost > 0):
            raise ValueError(f"cost must be a positive number, got {cost}")
        now = self.clock() if now is None else now
        mine = self._bucket(key, now)
        waits = [mine.wait(cost, now)]
        if self.shared is not None:
            waits.append(self.shared.wait(cost, now))
        if max(waits) > 0:  # all or nothing: a refusal charges neither bucket
            self.num_refused += 1
            return Decision(False, max(waits))
        mine.take(cost)
        if self.shared is not None:
            self.shared.take(cost)
        return Decision(True, 0.0)

    def refund(self, key: str, cost: float, now: float | None = None) -> None:
        """Give back a charge for a request that was admitted but never ran (say, the
        engine refused it); the level never goes past the burst."""
        now = self.clock() if now is None else now
        for bucket in (self.buckets.get(key), self.shared):
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.config.burst, bucket.level + cost)

    def forget_idle(self, now: float | None = None) -> int:
        """Drop the buckets that are full again (idle keys); the number dropped."""
        now = self.clock() if now is None else now
        idle = [k for k, b in self.buckets.items() if b.full(now)]
        for k in idle:
            del self.buckets[k]
        return len(idle)

