"""A day of traffic: a daily curve with bursts, as the arrival times of requests.

The arrival rate (requests/s) follows a sinusoid over one period (a day), with a trough
at night and a peak in the afternoon, times a factor during random bursts (a launch, a
batch job, a retry storm):

    lambda(t) = (base + (peak - base) * (1 + cos(2 pi (t - t_peak) / P)) / 2) * b(t),
    b(t) = burst_factor inside a burst, else 1.

Arrivals are a non-homogeneous Poisson process drawn by *thinning* (Lewis and Shedler
1979): propose arrivals at the constant rate lambda_max >= lambda(t), keep each with
probability lambda(t) / lambda_max. Burst starts are a Poisson process of their own.

Each request also gets a *work* factor, the size of its job relative to the mean
(LLM output lengths are right-skewed): gamma with mean 1 and coefficient of variation
``work_cv`` (1 = exponential, 0 = all equal). Drawing it with the trace, not in the
simulator, gives every policy run on the trace the same requests (common random
numbers), so two policies differ by their policy alone.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Trace", "TrafficConfig", "make_trace"]

HOUR = 3600.0


@dataclass(frozen=True)
class TrafficConfig:
    """The daily curve (requests/s), its bursts and the spread of request sizes."""

    duration_s: float = 24 * HOUR
    period_s: float = 24 * HOUR
    base_rps: float = 1.0  # the night-time trough
    peak_rps: float = 10.0  # the afternoon peak, before bursts
    peak_at_s: float = 14 * HOUR
    bursts_per_period: float = 4.0
    burst_s: float = 600.0
    burst_factor: float = 2.5
    work_cv: float = 1.0

    def __post_init__(self) -> None:
        for name in ("duration_s", "period_s", "burst_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.base_rps <= self.peak_rps or self.peak_rps <= 0:
            raise ValueError(f"need 0 <= base_rps <= peak_rps and peak_rps > 0, got "
                             f"{self.base_rps}, {self.peak_rps}")
        if self.bursts_per_period < 0 or self.burst_factor < 1 or self.work_cv < 0:
            raise ValueError("need bursts_per_period >= 0, burst_factor >= 1, work_cv >= 0")

    def rate(self, t: float, bursts: Sequence[float] = ()) -> float:
        """lambda(t) in requests/s, given the burst start times (sorted)."""
        phase = 2 * math.pi * (t - self.peak_at_s) / self.period_s
        r = self.base_rps + (self.peak_rps - self.base_rps) * (1 + math.cos(phase)) / 2
        i = bisect_right(bursts, t)
        return r * self.burst_factor if i and t < bursts[i - 1] + self.burst_s else r


@dataclass(frozen=True)
class Trace:
    """Arrival times (s, sorted), each request's work factor, and the bursts' starts."""

    config: TrafficConfig
    arrivals: list[float]
    work: list[float]
    bursts: list[float]
    seed: int

    def __len__(self) -> int:
        return len(self.arrivals)


def make_trace(config: TrafficConfig | None = None, seed: int = 0) -> Trace:
    """Draw one trace; the same (config, seed) gives the same trace."""
    cfg = config or TrafficConfig()
    rng = random.Random(seed)
    bursts, t = [], 0.0
    per_s = cfg.bursts_per_period / cfg.period_s
    while per_s > 0:
        t += rng.expovariate(per_s)
        if t >= cfg.duration_s:
            break
        bursts.append(t)
    top = cfg.peak_rps * cfg.burst_factor  # lambda_max: no lambda(t) is above it
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(top)
        if t >= cfg.duration_s:
            break
        if rng.random() * top < cfg.rate(t, bursts):
            arrivals.append(t)
    if cfg.work_cv == 0:
        work = [1.0] * len(arrivals)
    else:  # gamma(k, theta) has mean k theta = 1 and cv 1 / sqrt(k)
        k = 1 / cfg.work_cv ** 2
        work = [rng.gammavariate(k, 1 / k) for _ in arrivals]
    return Trace(cfg, arrivals, work, bursts, seed)
