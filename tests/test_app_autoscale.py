"""The autoscaling simulator: traces, policies, accounting, and the headroom trade-off."""

from __future__ import annotations

import math

import pytest

from infer_lab.app.autoscale import (FleetConfig, FleetState, QueueLength, TargetUtilization,
                                     format_rows, measure_cold_start, simulate, sweep)
from infer_lab.app.traffic import TrafficConfig, make_trace

H = 3600.0
# Four hours with a full "day" in them: ~30k requests, a few bursts; 2 requests/s per replica.
TRAFFIC = TrafficConfig(duration_s=4 * H, period_s=4 * H, peak_at_s=2 * H, base_rps=0.5,
                        peak_rps=4.0, bursts_per_period=2, burst_s=300)
FLEET = FleetConfig(service_s=4.0, slots=8, cold_start_s=60.0, queue_timeout_s=30.0)


@pytest.fixture(scope="module")
def trace():
    return make_trace(TRAFFIC, seed=3)  # a seed whose bursts make the trade-off visible


def test_the_same_seed_gives_the_same_trace_and_the_same_run(trace):
    again = make_trace(TRAFFIC, seed=3)
    assert again.arrivals == trace.arrivals and again.work == trace.work
    assert make_trace(TRAFFIC, seed=4).arrivals != trace.arrivals
    a, b = simulate(trace, TargetUtilization(0.7), FLEET), simulate(again,
                                                                    TargetUtilization(0.7), FLEET)
    assert a.summary() == b.summary() and a.series == b.series


def test_the_trace_follows_the_daily_curve(trace):
    assert trace.arrivals == sorted(trace.arrivals) and len(trace.work) == len(trace)
    assert all(0 <= t < TRAFFIC.duration_s for t in trace.arrivals)
    assert sum(trace.work) / len(trace) == pytest.approx(1.0, abs=0.03)  # mean work 1
    # the expected count is the integral of the rate; a Poisson count is within a few sd
    dt = 1.0
    expected = sum(TRAFFIC.rate(k * dt, trace.bursts) * dt
                   for k in range(int(TRAFFIC.duration_s / dt)))
    assert abs(len(trace) - expected) < 5 * math.sqrt(expected)
    night = sum(t < 0.25 * H for t in trace.arrivals)
    peak = sum(abs(t - 2 * H) < 0.125 * H for t in trace.arrivals)
    assert peak > 3 * night
    assert TRAFFIC.rate(2 * H) == pytest.approx(4.0) and TRAFFIC.rate(0) == pytest.approx(0.5)


@pytest.mark.parametrize("fleet, policy", [
    (FLEET, TargetUtilization(0.7)),
    (FLEET, QueueLength(6)),
    (FleetConfig(service_s=4.0, max_replicas=2, queue_timeout_s=5.0), TargetUtilization(0.7)),
    (FleetConfig(service_s=4.0, min_replicas=0, cold_start_s=120.0, queue_timeout_s=1.0),
     TargetUtilization(0.9)),
])
def test_every_arrival_is_served_or_dropped(trace, fleet, policy):
    res = simulate(trace, policy, fleet)
    assert res.arrivals == len(trace)
    assert res.served + res.dropped == res.arrivals
    assert 1 <= res.peak_replicas <= fleet.max_replicas
    assert len(res.series["t"]) == len(res.series["ready"]) > 0
    if fleet.max_replicas == 2:  # 4 requests/s at most against a 4 requests/s peak + bursts
        assert res.dropped > 0.01 * res.arrivals
        assert res.p99_s == res.p99_wait_s == math.inf  # over 1% never answered
        assert res.p50_s < fleet.queue_timeout_s + 10 * fleet.service_s


def test_cost_is_replica_hours_times_the_price():
    quiet = make_trace(TrafficConfig(duration_s=2 * H, base_rps=0, peak_rps=1e-9,
                                     bursts_per_period=0), seed=0)
    fleet = FleetConfig(min_replicas=3, price_per_replica_hour=2.0)
    res = simulate(quiet, TargetUtilization(0.5), fleet)
    assert res.arrivals == 0 and math.isnan(res.p99_s)
    assert res.replica_hours == pytest.approx(6.0) and res.cost == pytest.approx(12.0)
    assert res.cost_per_hour == pytest.approx(6.0)


def test_more_headroom_never_raises_p99_nor_lowers_cost(trace):
    runs = [simulate(trace, TargetUtilization(t), FLEET) for t in (0.4, 0.6, 0.8, 0.95)]
    for more, less in zip(runs, runs[1:]):  # more headroom first
        assert more.p99_s <= less.p99_s and more.p99_wait_s <= less.p99_wait_s
        assert more.dropped <= less.dropped
        assert more.cost >= less.cost
    assert runs[0].cost > 1.5 * runs[-1].cost and runs[0].p99_wait_s < runs[-1].p99_wait_s


def test_a_longer_cold_start_never_lowers_p99(trace):
    runs = [simulate(trace, TargetUtilization(0.6), FleetConfig(
        service_s=4.0, cold_start_s=c, queue_timeout_s=30.0)) for c in (0.0, 60.0, 300.0)]
    for fast, slow in zip(runs, runs[1:]):
        assert fast.p99_s <= slow.p99_s and fast.dropped <= slow.dropped
    assert runs[0].p99_wait_s < runs[-1].p99_wait_s


def test_the_sweep_has_one_row_per_pair_and_a_table(trace):
    rows = sweep(trace, FLEET, targets=(0.5, 0.9), cold_starts=(10.0, 300.0))
    assert [(r["cold_start_s"], r["target_utilization"]) for r in rows] == [
        (10.0, 0.5), (10.0, 0.9), (300.0, 0.5), (300.0, 0.9)]
    assert rows[0]["headroom"] == 0.5 and "series" not in rows[0]
    table = format_rows(rows).splitlines()
    assert len(table) == 5 and "p99_s" in table[0]


def test_policies_on_hand_made_states():
    s = FleetState(now=0, ready=2, starting=0, busy_slots=16, slots_per_replica=8,
                   queue_length=8, arrival_rps=10.0, replica_rps=2.0)
    assert TargetUtilization(0.5).desired(s) == 10  # 10 / (0.5 * 2)
    assert TargetUtilization(1.0).desired(s) == 5
    assert QueueLength(6).desired(s) == 4  # ceil(24 / 6)


@pytest.mark.parametrize("make", [
    lambda: TargetUtilization(0), lambda: TargetUtilization(1.5), lambda: QueueLength(0),
    lambda: FleetConfig(service_s=0), lambda: FleetConfig(slots=0),
    lambda: FleetConfig(cold_start_s=-1), lambda: FleetConfig(queue_timeout_s=math.inf),
    lambda: FleetConfig(min_replicas=5, max_replicas=2), lambda: FleetConfig(max_replicas=0),
    lambda: FleetConfig(initial_replicas=100), lambda: FleetConfig(tick_s=0),
    lambda: FleetConfig(price_per_replica_hour=-1),
    lambda: TrafficConfig(duration_s=0), lambda: TrafficConfig(base_rps=5, peak_rps=1),
    lambda: TrafficConfig(peak_rps=0), lambda: TrafficConfig(burst_factor=0.5),
    lambda: TrafficConfig(work_cv=-1),
])
def test_invalid_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_the_cold_start_is_measured_in_a_fresh_process():
    parts = measure_cold_start("code-s", warmup_tokens=2)
    assert all(parts[k] > 0 for k in ("import_s", "load_s", "warmup_s", "interpreter_s"))
    assert parts["cold_start_s"] == pytest.approx(
        sum(parts[k] for k in ("import_s", "load_s", "warmup_s", "interpreter_s")))
