"""Scaling policies: how many replicas a fleet should have, from what it can observe.

A policy is a pure function of a :class:`FleetState` (no clock, no history of its own),
so it can be tested on hand-made states and swapped in the simulator
(:func:`infer_lab.app.autoscale.simulate`) for a learner's own. Two classic rules:

    target utilisation (Kubernetes HPA):  N = ceil(lambda / (rho* mu))
    queue length (KEDA):                  N = ceil((busy + queued) / per_replica)

where lambda is the measured arrival rate, mu one replica's capacity (requests/s) and
rho* the target utilisation (1 - rho* is the headroom kept for bursts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FleetState", "QueueLength", "ScalingPolicy", "TargetUtilization"]


@dataclass(frozen=True)
class FleetState:
    """What a policy sees at a tick."""

    now: float
    ready: int  # serving replicas (draining ones excluded)
    starting: int  # in their cold start
    busy_slots: int
    slots_per_replica: int
    queue_length: int
    arrival_rps: float  # measured over the last window_s
    replica_rps: float  # mu: requests/s one replica serves when full


class ScalingPolicy(Protocol):
    def desired(self, state: FleetState) -> int:
        """How many replicas (ready + starting) there should be; clamped by the caller."""
        ...


@dataclass(frozen=True)
class TargetUtilization:
    """N = ceil(lambda / (target * mu)): size for the measured demand, keep 1 - target
    spare (Kubernetes HPA's rule, on offered load rather than busy time, which caps at
    1 and so under-reports an overload)."""

    target: float = 0.7

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"target utilisation must be in (0, 1], got {self.target}")

    def desired(self, state: FleetState) -> int:
        return math.ceil(state.arrival_rps / (self.target * state.replica_rps) - 1e-9)


@dataclass(frozen=True)
class QueueLength:
    """N = ceil((busy + queued) / per_replica): KEDA's queue scaler. It reacts to a
    backlog the arrival rate alone does not show (long requests, a slow replica)."""

    per_replica: float = 6.0

    def __post_init__(self) -> None:
        if not self.per_replica > 0:
            raise ValueError(f"per_replica must be > 0, got {self.per_replica}")

    def desired(self, state: FleetState) -> int:
        return math.ceil((state.busy_slots + state.queue_length) / self.per_replica)
