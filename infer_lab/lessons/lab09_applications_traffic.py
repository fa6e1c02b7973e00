"""Lab 09: the levers that shape traffic. A burst of requests through a token bucket (the
learner's, once it passes), and a day of traffic replayed against an autoscaled fleet with
a policy dropdown, a headroom slider and a cold-start slider."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..app.autoscale import FleetConfig, QueueLength, TargetUtilization, simulate
from ..app.traffic import HOUR, Trace, TrafficConfig, make_trace
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


# -- rate limits ------------------------------------------------------------------------------
def burst_requests(at_once: int = 20, spread: int = 20, over_s: float = 5.0
                   ) -> list[tuple[float, float]]:
    """``at_once`` requests at t = 0, then ``spread`` more evenly over ``over_s`` seconds."""
    step = over_s / spread
    return [(0.0, 1.0)] * at_once + [(round((i + 1) * step, 9), 1.0) for i in range(spread)]


def run_bucket(make_bucket: Callable, rate: float, burst: float,
               requests: list[tuple[float, float]]) -> list[tuple[float, bool, float]]:
    """(time, admitted, retry_after) of each request through ``make_bucket(rate, burst)``."""
    take = make_bucket(rate, burst)
    return [(t, *take(t, cost)) for t, cost in requests]


def package_decisions(rate: float, burst: float, requests: list[tuple[float, float]]
                      ) -> list[tuple[bool, float]]:
    """The same requests through the server's limiter (:class:`RateLimiter`, one key)."""
    from ..app.rate_limit import RateLimitConfig, RateLimiter

    lim = RateLimiter(RateLimitConfig.simple(rate, burst), clock=lambda: 0.0)
    return [tuple(lim.try_acquire("key", c, now=t)) for t, c in requests]


def bucket_figure(rows: list[tuple[float, bool, float]], rate: float, burst: float) -> go.Figure:
    """Each request at its time: admitted or refused (with the retry-after it was told)."""
    fig = go.Figure()
    for ok, name, color in ((True, "admitted", COLORS[2]), (False, "refused", COLORS[3])):
        pts = [(t, i) for i, (t, o, _) in enumerate(rows) if bool(o) == ok]
        fig.add_trace(go.Scatter(x=[t for t, _ in pts], y=[i + 1 for _, i in pts],
                                 mode="markers", name=name, marker={"color": color, "size": 8},
                                 text=[f"retry after {rows[i][2]:.2f} s" for _, i in pts]))
    top = rows[-1][0] if rows else 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[burst, burst + rate * top], mode="lines",
                             name="burst + rate x t (the most a key can get)",
                             line={"dash": "dash", "color": "gray"}))
    return layout(fig, f"A token bucket (rate {rate:g}/s, burst {burst:g}) against a burst",
                  "arrival time (s)", "request number (count)")


# -- autoscaling -----------------------------------------------------------------------------
def lab_trace(hours: float, seed: int = 3) -> Trace:
    """A compressed "day" of ``hours`` hours: a trough, an afternoon peak, two bursts."""
    h = hours * HOUR
    return make_trace(TrafficConfig(duration_s=h, period_s=h, peak_at_s=h * 14 / 24,
                                    base_rps=0.5, peak_rps=4.0, bursts_per_period=2,
                                    burst_s=300), seed=seed)


POLICIES = {"target utilisation (HPA)": "target", "queue length (KEDA)": "queue",
            "fixed at peak": "fixed"}


def run_policy(trace: Trace, kind: str, headroom: float, cold_start_s: float,
               fleet: FleetConfig | None = None):
    """One simulated day under a policy; ``headroom`` = 1 - target utilisation (for the queue
    scaler, the share of each replica's slots kept free)."""
    from dataclasses import replace

    cfg = replace(fleet or FleetConfig(), cold_start_s=cold_start_s)
    if kind == "fixed":  # no scaler: enough replicas for the peak with its bursts
        peak = trace.config.peak_rps * trace.config.burst_factor
        n = min(cfg.max_replicas, max(1, int(-(-peak // ((1 - headroom) * cfg.replica_rps)))))
        cfg = replace(cfg, min_replicas=n, initial_replicas=n)
        return simulate(trace, TargetUtilization(1.0), cfg)
    if kind == "queue":
        return simulate(trace, QueueLength(max(0.5, cfg.slots * (1 - headroom))), cfg)
    return simulate(trace, TargetUtilization(max(0.05, 1 - headroom)), cfg)


def fleet_figure(res, title: str) -> go.Figure:
    s = res.series
    hours = [t / HOUR for t in s["t"]]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=hours, y=s["arrival_rps"], name="arrivals (requests/s)",
                             line={"color": COLORS[0]}), secondary_y=False)
    fig.add_trace(go.Scatter(x=hours, y=s["ready"], name="replicas ready",
                             line={"color": COLORS[2], "shape": "hv"}), secondary_y=True)
    fig.add_trace(go.Scatter(x=hours, y=[r + st for r, st in zip(s["ready"], s["starting"])],
                             name="ready + starting", line={"color": COLORS[1], "dash": "dot",
                                                            "shape": "hv"}), secondary_y=True)
    layout(fig, title, "time of the trace (hours)", "arrival rate (requests/s)")
    fig.update_yaxes(title_text="replicas (count)", secondary_y=True)
    return fig


def result_line(res) -> str:
    p99 = "inf (over 1% dropped)" if res.p99_s == float("inf") else f"{res.p99_s:.1f} s"
    return (f"p50 {res.p50_s:.1f} s, p99 {p99}, dropped {res.dropped}/{res.arrivals}, "
            f"peak {res.peak_replicas} replicas, {res.replica_hours:.1f} replica-hours, "
            f"${res.cost:.2f} (${res.cost_per_hour:.2f}/h)")


class AutoscaleExplorer(Explorer):
    """A policy dropdown, a headroom slider and a cold-start slider over one trace."""

    def __init__(self, trace: Trace, fleet: FleetConfig | None = None):
        self.trace, self.fleet = trace, fleet or FleetConfig()
        style = {"description_width": "110px"}
        self.policy = W.Dropdown(options=list(POLICIES), value="target utilisation (HPA)",
                                 description="policy", style=style)
        self.headroom = W.FloatSlider(value=0.3, min=0.0, max=0.8, step=0.05,
                                      description="headroom", continuous_update=False,
                                      style=style)
        self.cold = W.FloatLogSlider(value=60, base=10, min=0, max=2.7, step=0.1,
                                     description="cold start (s)", continuous_update=False,
                                     style=style)
        self.controls = W.HBox([self.policy, self.headroom, self.cold])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.policy, self.headroom, self.cold)
        self.update()

    def result(self):
        return run_policy(self.trace, POLICIES[self.policy.value], self.headroom.value,
                          self.cold.value, self.fleet)

    def update(self) -> None:
        res = self.result()
        swap_figure(self.figure, fleet_figure(res, f"{self.policy.value}, headroom "
                                              f"{self.headroom.value:.0%}"))
        self.readout.value = result_line(res)


def headroom_figure(trace: Trace, cold_starts=(10.0, 60.0, 300.0),
                    headrooms=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)) -> go.Figure:
    """p99 queue wait against cost per hour as the headroom grows, per cold start."""
    fig = go.Figure()
    for k, cold in enumerate(cold_starts):
        res = [run_policy(trace, "target", h, cold) for h in headrooms]
        fig.add_trace(go.Scatter(x=[r.cost_per_hour for r in res],
                                 y=[max(r.p99_wait_s, 1e-3) for r in res],
                                 mode="lines+markers+text", name=f"cold start {cold:g} s",
                                 text=[f"{h:.0%}" for h in headrooms],
                                 textposition="top center", line={"color": COLORS[k]}))
    layout(fig, "Headroom buys latency: p99 queue wait vs cost (labels: headroom)",
           "fleet cost ($ per hour)", "p99 queue wait (s, log)")
    fig.update_yaxes(type="log")
    return fig
