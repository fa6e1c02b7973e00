"""Autoscaling model replicas: a discrete-event simulator of headroom, cold start, p99, cost.

Model. Requests (a :class:`~infer_lab.app.traffic.Trace`) join one FIFO queue. A replica
serves ``slots`` requests at once, each for ``service_s * work`` seconds, so one
replica's capacity is mu = slots / service_s requests/s. A request that waits longer
than ``queue_timeout_s`` to start is dropped. Every ``tick_s`` a :class:`ScalingPolicy`
sees the fleet and the arrival rate measured over the last ``window_s`` and names a
replica count, clamped to [min, max]; a new replica serves only after ``cold_start_s``
(process start, weights, warm-up: :func:`measure_cold_start` times ours), and a removed
one finishes its requests first. Scale-down waits ``scale_down_delay_s`` (it takes the
largest count asked for over that window, like Kubernetes' stabilisation window), so a
dip between two bursts does not throw away warm replicas.

The trade-off. With arrival rate lambda and N replicas the utilisation is
rho = lambda / (N mu); a target rho* sizes the fleet at N = ceil(lambda / (rho* mu)). The
headroom 1 - rho* is what absorbs a rise in lambda during the cold start T it takes to
add replicas: a burst that adds d requests/s past the headroom queues about d * T
requests. So less headroom or a longer cold start gives a higher p99 (and drops), more
headroom a higher bill, cost/h = price * mean N. :func:`sweep` draws that surface.

Simplification: a slot's service time does not depend on how many slots are busy (a
real batching engine's steps slow as the batch grows; fold that into ``service_s``).
Plain Python, no randomness of its own: the same trace gives the same result.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import asdict, dataclass, field, replace

from .cold_start import measure_cold_start
from .scaling import FleetState, QueueLength, ScalingPolicy, TargetUtilization
from .traffic import Trace

__all__ = ["FleetConfig", "FleetState", "QueueLength", "ScaleResult", "ScalingPolicy",
           "TargetUtilization", "format_rows", "measure_cold_start", "simulate", "sweep"]

_FINISH, _READY, _ARRIVAL, _TICK = range(4)  # at one instant: free slots, then admit


@dataclass(frozen=True)
class FleetConfig:
    """Replicas (service, slots, cold start, price) and the scaler's limits and clocks."""

    service_s: float = 4.0  # mean seconds per request in a slot (work factor 1)
    slots: int = 8  # requests one replica serves at once (its batch)
    cold_start_s: float = 60.0
    min_replicas: int = 1
    max_replicas: int = 64
    initial_replicas: int | None = None  # warm at t = 0 (default: min_replicas)
    tick_s: float = 15.0
    window_s: float = 60.0
    scale_down_delay_s: float = 300.0
    queue_timeout_s: float = 30.0
    price_per_replica_hour: float = 2.5

    def __post_init__(self) -> None:
        for name in ("service_s", "tick_s", "window_s", "queue_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        for name in ("cold_start_s", "scale_down_delay_s", "price_per_replica_hour"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1, "
                             f"got {self.min_replicas}, {self.max_replicas}")
        n = self.initial_replicas
        if n is not None and not self.min_replicas <= n <= self.max_replicas:
            raise ValueError(f"initial_replicas {n} is outside [min, max]")

    @property
    def replica_rps(self) -> float:
        return self.slots / self.service_s


@dataclass
class ScaleResult:
    """One run: latency, drops, replica-hours and cost, and a time series (one row per
    tick) for plotting. A dropped request counts as infinitely late in the percentiles:
    the p99 of the served alone would *fall* as more are dropped (the slowest go first),
    rewarding the fleet that fails more; so p99 is inf once over 1% are dropped."""

    arrivals: int
    served: int
    dropped: int
    p50_s: float  # latency: queue wait + service, over all arrivals (a drop is inf)
    p99_s: float
    p99_wait_s: float  # the queue's share alone: what the scaling policy controls
    replica_hours: float
    cost: float
    cost_per_hour: float
    peak_replicas: int
    duration_s: float
    series: dict[str, list[float]] = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "series"}


@dataclass
class _Replica:
    ready: bool = False
    busy: int = 0
    draining: bool = False


def _percentile(sorted_v: list[float], q: float) -> float:
    """numpy's default (linear between order statistics); nan for no values, inf once
    it reaches the dropped requests."""
    if not sorted_v:
        return math.nan
    r = q / 100 * (len(sorted_v) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    if math.isinf(sorted_v[hi]):
        return sorted_v[lo] if r == lo else math.inf
    return sorted_v[lo] + (r - lo) * (sorted_v[hi] - sorted_v[lo])


class _Fleet:
    """The simulation's state and its event handlers; :func:`simulate` drives it."""

    def __init__(self, cfg: FleetConfig):
        self.cfg = cfg
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, order, replica)
        self.order = self.next_id = self.peak = self.dropped = self.busy = 0
        self.replicas: dict[int, _Replica] = {}
        self.free: dict[int, None] = {}  # serving replicas with a free slot, in order
        self.queue: deque[tuple[float, float]] = deque()  # (arrival, work)
        self.recent: deque[float] = deque()  # arrival times within the window
        self.asked: deque[tuple[float, int]] = deque()  # (tick, count asked): scale-down
        self.latencies: list[float] = []
        self.waits: list[float] = []
        self.tick_lat: list[float] = []  # latencies decided since the last tick
        self.series: dict[str, list[float]] = {k: [] for k in (
            "t", "arrival_rps", "ready", "starting", "queue", "busy", "dropped", "p99_s")}

    def push(self, t: float, kind: int, rid: int = -1) -> None:
        heapq.heappush(self.events, (t, kind, self.order, rid))
        self.order += 1

    def add(self, now: float, warm: bool) -> None:
        rid, self.next_id = self.next_id, self.next_id + 1
        self.replicas[rid] = _Replica()
        self.push(now if warm else now + self.cfg.cold_start_s, _READY, rid)
        self.peak = max(self.peak, len(self.replicas))

    def dispatch(self, now: float) -> None:
        """Drop what waited past the timeout (oldest first), then fill free slots."""
        cfg, queue = self.cfg, self.queue
        while queue and now - queue[0][0] > cfg.queue_timeout_s:
            queue.popleft()
            self.dropped += 1
            for v in (self.waits, self.latencies, self.tick_lat):  # never answered
                v.append(math.inf)
        while queue and self.free:
            rid = next(iter(self.free))
            r = self.replicas[rid]
            arrived, w = queue.popleft()
            service = cfg.service_s * w
            r.busy += 1
            self.busy += 1
            if r.busy == cfg.slots:
                del self.free[rid]
            self.push(now + service, _FINISH, rid)
            self.waits.append(now - arrived)
            self.latencies.append(self.waits[-1] + service)
            self.tick_lat.append(self.latencies[-1])

    def scale(self, now: float, target: int) -> None:
        """Up: undrain warm replicas first, then start new ones; down: drain the newest
        starting ones, then the least busy serving ones."""
        replicas = self.replicas
        active = [i for i, r in replicas.items() if not r.draining]
        if target > len(active):
            need = target - len(active)
            for i, r in sorted(((i, r) for i, r in replicas.items() if r.draining),
                               key=lambda x: -x[1].busy)[:need]:
                r.draining = False
                if r.ready and r.busy < self.cfg.slots:
                    self.free[i] = None
                need -= 1
            for _ in range(need):
                self.add(now, warm=False)
        elif target < len(active):
            starting = [i for i in active if not replicas[i].ready][::-1]  # newest first
            serving = sorted((i for i in active if replicas[i].ready),
                             key=lambda i: replicas[i].busy)
            for i in (starting + serving)[:len(active) - target]:
                replicas[i].draining = True
                self.free.pop(i, None)
                if replicas[i].busy == 0:
                    del replicas[i]

    def finish(self, rid: int) -> None:
        r = self.replicas[rid]
        r.busy -= 1
        self.busy -= 1
        if r.draining and r.busy == 0:
            del self.replicas[rid]
        elif not r.draining:
            self.free[rid] = None

    def ready(self, rid: int) -> None:
        r = self.replicas.get(rid)
        if r is not None:  # else it was cancelled during its cold start
            r.ready = True
            if not r.draining:
                self.free[rid] = None

    def tick(self, t: float, policy: ScalingPolicy, end_s: float) -> None:
        """Ask the policy, scale (up at once, down only after the delay), record."""
        cfg, replicas = self.cfg, self.replicas
        while self.recent and self.recent[0] <= t - cfg.window_s:
            self.recent.popleft()
        state = FleetState(t, sum(r.ready and not r.draining for r in replicas.values()),
                           sum(not r.ready and not r.draining for r in replicas.values()),
                           self.busy, cfg.slots, len(self.queue),
                           len(self.recent) / cfg.window_s, cfg.replica_rps)
        want = min(cfg.max_replicas, max(cfg.min_replicas, int(policy.desired(state))))
        while self.asked and self.asked[0][0] <= t - cfg.scale_down_delay_s:
            self.asked.popleft()
        self.asked.append((t, want))
        self.scale(t, max(c for _, c in self.asked))
        self.dispatch(t)
        for k, v in zip(self.series, (t, state.arrival_rps, state.ready, state.starting,
                                      len(self.queue), self.busy, self.dropped,
                                      _percentile(sorted(self.tick_lat), 99))):
            self.series[k].append(v)
        self.tick_lat.clear()
        if t + cfg.tick_s < end_s or self.queue or self.busy:
            self.push(t + cfg.tick_s, _TICK)


def simulate(trace: Trace, policy: ScalingPolicy, config: FleetConfig | None = None
             ) -> ScaleResult:
    """Replay ``trace`` against a fleet that ``policy`` scales; deterministic."""
    cfg = config or FleetConfig()
    arrivals, work, end_s = trace.arrivals, trace.work, trace.config.duration_s
    fleet = _Fleet(cfg)
    for _ in range(cfg.initial_replicas if cfg.initial_replicas is not None
                   else cfg.min_replicas):
        fleet.add(0.0, warm=True)
    fleet.push(0.0, _TICK)
    area, last_t, i, n = 0.0, 0.0, 0, len(arrivals)
    while True:  # the next arrival or event, whichever comes first
        events = fleet.events
        if i < n and (not events or (arrivals[i], _ARRIVAL) < events[0][:2]):
            t, kind, rid = arrivals[i], _ARRIVAL, -1
        elif events:
            t, kind, _, rid = heapq.heappop(events)
        else:
            break
        if i == n and not fleet.queue and not fleet.busy and t > end_s:
            break  # only cold starts (of nothing to serve) are left
        area += len(fleet.replicas) * (t - last_t)  # replica-seconds paid for
        last_t = t
        if kind == _ARRIVAL:
            fleet.queue.append((t, work[i]))
            fleet.recent.append(t)
            i += 1
        elif kind == _FINISH:
            fleet.finish(rid)
        elif kind == _READY:
            fleet.ready(rid)
        fleet.dispatch(t)
        if kind == _TICK:
            fleet.tick(t, policy, end_s)
    end = max(end_s, last_t)  # the whole day is paid for, and any drain past its end
    hours = (area + len(fleet.replicas) * (end - last_t)) / 3600
    cost = hours * cfg.price_per_replica_hour
    lat = sorted(fleet.latencies)
    return ScaleResult(n, len(lat) - fleet.dropped, fleet.dropped, _percentile(lat, 50),
                       _percentile(lat, 99), _percentile(sorted(fleet.waits), 99), hours,
                       cost, cost / (end / 3600), fleet.peak, end, fleet.series)


def sweep(trace: Trace, config: FleetConfig | None = None,
          targets: tuple[float, ...] = (0.5, 0.7, 0.9),
          cold_starts: tuple[float, ...] = (10.0, 60.0, 300.0)) -> list[dict]:
    """p99, drops and cost for each (cold start, target utilisation) on one trace."""
    cfg = config or FleetConfig()
    rows = []
    for cold in cold_starts:
        for target in targets:
            res = simulate(trace, TargetUtilization(target), replace(cfg, cold_start_s=cold))
            rows.append({"cold_start_s": cold, "target_utilization": target,
                         "headroom": round(1 - target, 6), **res.summary()})
    return rows


def format_rows(rows: list[dict], columns: tuple[str, ...] = (
        "cold_start_s", "target_utilization", "p50_s", "p99_s", "p99_wait_s", "dropped",
        "replica_hours", "cost_per_hour")) -> str:
    """A plain-text table of :func:`sweep`'s rows."""
    def cell(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = [" | ".join(columns)] + [" | ".join(cell(r[c]) for c in columns) for r in rows]
    return "\n".join(lines)
