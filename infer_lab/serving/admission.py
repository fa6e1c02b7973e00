"""Per-request admission for the HTTP server: who is asking, may they, and how much to run.

After the server's capacity check (429 "busy" when ``max_num_seqs + max_queue`` requests
are in flight), each request goes through two optional policies handed in from outside
(house rule 16: the technique takes its pluggable piece as an argument):

1. *Degradation* (:class:`~infer_lab.app.degrade.DegradePolicy`): once enough requests
   wait, ``max_tokens`` is capped. First, so that a token-priced rate limit charges the
   request that will run, not the one asked for.
2. *Rate limit* (:class:`Limiter`, e.g. :class:`~infer_lab.app.rate_limit.RateLimiter`):
   the key is the ``Authorization: Bearer <key>`` header (none: :data:`ANONYMOUS`). Over
   its rate: 429, ``Retry-After`` in whole seconds rounded up (RFC 9110 allows no
   fraction; rounding down would invite a retry that is refused again), and OpenAI's
   error body, ``{"error": {"type": "rate_limit_exceeded", ...}}``. A request that can
   never fit (it costs more than the burst) gets a 429 without ``Retry-After``.

Keys are not authenticated here: they only name whose bucket to charge.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter
from starlette.responses import JSONResponse, Response

from .schema import ParsedRequest

if TYPE_CHECKING:
    from ..app.degrade import Degradation, DegradePolicy

__all__ = ["ANONYMOUS", "Admission", "Admitted", "Limiter", "add_cli_args", "bearer_key",
           "error_response", "from_cli_args"]

ANONYMOUS = "anonymous"  # the API key of a request that names none


class Limiter(Protocol):
    """What the server asks of a rate limiter."""

    def cost(self, prompt_tokens: int, max_tokens: int) -> float: ...

    def try_acquire(self, key: str, cost: float = 1.0, now: float | None = None
                    ) -> tuple[bool, float]:
        """(admitted, seconds to wait if not); ValueError if it can never be admitted."""
        ...

    def refund(self, key: str, cost: float, now: float | None = None) -> None: ...


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; :data:`ANONYMOUS` for no
    header, another scheme or an empty key (so all anonymous callers share one bucket)."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else ANONYMOUS


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": kind}},
                        status_code=status, headers=headers)


@dataclass(frozen=True)
class Admitted:
    """A request let in: as it will run, whose it is, what it was charged, what changed."""

    req: ParsedRequest
    key: str
    cost: float
    degraded: Degradation | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.degraded is None else {"X-Degraded": self.degraded.header()}

    def body(self) -> dict:
        """Fields added to the answer (the first chunk, when streamed)."""
        return {} if self.degraded is None else {"degraded": self.degraded.as_dict()}


class Admission:
    """Degrade, then rate-limit; each policy optional. Called on the event loop only."""

    def __init__(self, registry: CollectorRegistry, limiter: Limiter | None = None,
                 degrade: DegradePolicy | None = None):
        self.limiter, self.degrade = limiter, degrade
        self.rate_limited = Counter("infer_lab_rate_limited_requests",
                                    "429s (an API key over its rate limit)", registry=registry)
        self.degraded = Counter("infer_lab_degraded_requests",
                                "requests served with max_tokens capped (queue long)",
                                registry=registry)

    def admit(self, req: ParsedRequest, authorization: str | None,
              waiting: int) -> Admitted | Response:
        """The request as it will run, or the 429 that refuses it. ``waiting``: requests
        admitted and not yet running."""
        degraded = None if self.degrade is None else self.degrade.decide(waiting,
                                                                         req.max_tokens)
        if degraded is not None:
            req = dataclasses.replace(req, max_tokens=degraded.max_tokens)
        key = bearer_key(authorization)
        if self.limiter is None:
            cost = 0.0
        else:
            cost = self.limiter.cost(len(req.ids), req.max_tokens)
            refused = self._limit(key, cost)
            if refused is not None:
                return refused
        if degraded is not None:
            self.degraded.inc()
        return Admitted(req, key, cost, degraded)

    def _limit(self, key: str, cost: float) -> Response | None:
        try:
            ok, wait = self.limiter.try_acquire(key, cost)
        except ValueError as e:  # OpenAI answers "request too large" with a 429 too
            self.rate_limited.inc()
            return error_response(429, f"this request can never fit the rate limit, however "
                                       f"long it waits: {e}; send a smaller one (a shorter "
                                       f"prompt or fewer max_tokens)", "rate_limit_exceeded")
        if ok:
            return None
        self.rate_limited.inc()
        return error_response(429, f"rate limit reached for this API key; retry in "
                                   f"{wait:.2f} s", "rate_limit_exceeded",
                              {"Retry-After": str(max(1, math.ceil(wait)))})

    def refund(self, admitted: Admitted) -> None:
        """Give back the charge of a request that never ran (the engine refused it)."""
        if self.limiter is not None and admitted.cost:
            self.limiter.refund(admitted.key, admitted.cost)


def add_cli_args(p: argparse.ArgumentParser) -> None:
    """The server's flags for rate limits and degradation."""
    p.add_argument("--rate", type=float, help="per-API-key limit: tokens/s (off if unset)")
    p.add_argument("--burst", type=float, help="per-API-key bucket size (default: rate)")
    p.add_argument("--rate-cost", choices=["requests", "tokens"], default="requests",
                   help="a request costs 1, or its prompt + max_tokens")
    p.add_argument("--global-rate", type=float, help="a limit over all keys together")
    p.add_argument("--global-burst", type=float, help="(default: global rate)")
    p.add_argument("--degrade-queue", type=int, help="cap max_tokens once this many wait")
    p.add_argument("--degrade-max-tokens", type=int, default=64)


def from_cli_args(args: argparse.Namespace) -> tuple[Limiter | None, DegradePolicy | None]:
    """The limiter and degradation policy the flags ask for (ValueError if invalid)."""
    from ..app.degrade import DegradePolicy
    from ..app.rate_limit import BucketConfig, RateLimitConfig, RateLimiter

    limiter = degrade = None
    if args.rate is not None:
        shared = None if args.global_rate is None else BucketConfig(
            args.global_rate, max(1.0, args.global_rate) if args.global_burst is None
            else args.global_burst)
        limiter = RateLimiter(RateLimitConfig(
            BucketConfig(args.rate, max(1.0, args.rate) if args.burst is None else args.burst),
            shared, args.rate_cost))
    elif args.global_rate is not None or args.burst is not None:
        raise ValueError("--burst and --global-rate need --rate")
    if args.degrade_queue is not None:
        degrade = DegradePolicy(args.degrade_queue, args.degrade_max_tokens)
    return limiter, degrade
