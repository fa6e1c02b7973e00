"""Drive an engine over a workload and record what happened, for lab 06's figures.

Two drivers, for the two clocks a serving lab needs:

* :func:`run_trace` counts time in *ticks* (one ``step()`` call each): request i
  arrives at tick a_i. The result does not depend on how fast this machine is, so the
  timeline of static, dynamic and continuous batching (Orca, Yu et al. 2022) and the
  block tables of PagedAttention (Kwon et al. 2023) look the same everywhere.
* :func:`replay` counts wall-clock seconds: request i arrives a_i seconds after the
  start, with Poisson arrivals at rate lambda (gaps ~ Exp(lambda)). When the engine has
  nothing it can do until the next arrival, the clock jumps there instead of sleeping
  (a request already queued is charged the jump), so a sweep costs compute time only.

Both drive anything with the Engine's interface (``add_request``, ``step``,
``has_unfinished``, ``records``): :class:`~infer_lab.serving.Engine`,
:class:`~infer_lab.serving.StaticBatcher`, :class:`~infer_lab.serving.DynamicBatcher`.
Lab 06's figures of them are :mod:`.lab06_serving`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..metrics import percentiles
from ..serving.sequence import Sequence

# What a request does during one tick, as the timeline draws it.
STATES = ("waiting", "prefill", "decode", "padding", "preempted")


@dataclass
class Request:
    """One request of a workload: prompt token ids and how many tokens to generate."""

    prompt: list[int]
    max_tokens: int
    priority: int = 0  # lower is more important; only the Engine reads it (preemption)


@dataclass
class BlockSnapshot:
    """The paged KV cache after one tick: who holds which physical block."""

    num_blocks: int
    block_size: int
    tables: dict[int, list[int]]  # running seq_id -> its block table (logical order)
    tokens: dict[int, int]  # running seq_id -> tokens with K/V in the cache
    ref_counts: list[int]  # per physical block: how many sequences hold it
    cached_free: set[int]  # free blocks whose contents the prefix cache can still find


@dataclass
class Trace:
    """Per tick: each live request's state, the tick's wall time, a block snapshot."""

    seqs: list[Sequence]
    arrivals: list[int]  # tick each request arrived at
    first_token: dict[int, int] = field(default_factory=dict)  # seq_id -> tick of token 1
    states: list[dict[int, str]] = field(default_factory=list)  # tick -> seq_id -> state
    seconds: list[float] = field(default_factory=list)  # wall time of each tick
    snapshots: list[BlockSnapshot | None] = field(default_factory=list)

    @property
    def num_ticks(self) -> int:
        return len(self.states)

    def ttft_steps(self) -> list[int]:
        """Steps from arrival to first token, per request (its arrival step counts)."""
        return [self.first_token[s.seq_id] - a + 1 for s, a in zip(self.seqs, self.arrivals)]

    def count(self, state: str) -> int:
        """How many (request, tick) cells were in ``state``."""
        return sum(1 for tick in self.states for s in tick.values() if s == state)


def snapshot(engine) -> BlockSnapshot | None:
    """The block manager's state now (None for a baseline without paged blocks)."""
    bm = getattr(engine, "block_manager", None)
    if bm is None:
        return None
    running = engine.scheduler.running
    return BlockSnapshot(
        bm.num_blocks, bm.block_size,
        {s.seq_id: list(s.block_table) for s in running},
        {s.seq_id: s.num_computed_tokens for s in running},
        [b.ref_count for b in bm.blocks],
        {bid for bid in bm.free if bm.blocks[bid].hash is not None})


def _set_draining(engine, value: bool) -> None:
    # Request-level batchers hold a partial batch while more requests may come; once
    # the workload has all arrived they must run it (ServingEngine.set_draining).
    engine.set_draining(value)


def run_trace(engine, requests: list[Request], arrivals: list[int],
              max_ticks: int = 100_000) -> Trace:
    """Submit request i at tick ``arrivals[i]``, call ``step()`` once a tick, record.

    A tick's state per request: waiting (arrived, not computed this tick), prefill
    (prompt, chunk of it, or recomputation), decode (one token), padding (a batch row
    computed for a request that already finished: request-level batching's waste) or
    preempted (its blocks were taken back this tick).
    """
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    trace = Trace([], [])
    k, tick = 0, 0
    _set_draining(engine, False)
    while k < len(order) or engine.has_unfinished():
        if tick >= max_ticks:
            raise RuntimeError(f"no end after {max_ticks} ticks")
        while k < len(order) and arrivals[order[k]] <= tick:
            r = requests[order[k]]
            extra = {"priority": r.priority} if r.priority else {}  # baselines take none
            trace.seqs.append(engine.add_request(r.prompt, r.max_tokens, **extra))
            trace.arrivals.append(tick)
            k += 1
        _set_draining(engine, k == len(order))
        live = [s for s in trace.seqs if not s.is_finished]
        decoding = {s.seq_id for s in live if s.is_decoding}
        n_records = len(engine.records)
        t0 = time.perf_counter()
        engine.step()
        trace.seconds.append(time.perf_counter() - t0)
        rec = engine.records[-1] if len(engine.records) > n_records else None
        ran = set(rec.seq_ids) if rec else set()
        states = {}
        for s in live:
            if rec and s.seq_id in rec.preempted_ids:
                states[s.seq_id] = "preempted"
            elif s.seq_id not in ran:
                states[s.seq_id] = "waiting"
            elif not hasattr(engine, "block_manager"):  # a baseline: whole-batch phases
                states[s.seq_id] = "prefill" if rec.num_prefill_tokens else "decode"
            else:
                states[s.seq_id] = "decode" if s.seq_id in decoding else "prefill"
        for sid in ran - {s.seq_id for s in live}:
            states[sid] = "padding"
        for s in live:
            if s.output and s.seq_id not in trace.first_token:
                trace.first_token[s.seq_id] = tick
        trace.states.append(states)
        trace.snapshots.append(snapshot(engine))
        tick += 1
    _set_draining(engine, False)
    return trace


# -- wall-clock replay ------------------------------------------------------------------
def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times (s) of ``n`` requests at ``rate`` requests/s: gaps ~ Exp(rate)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


@dataclass
class RunStats:
    """Latency and throughput of one replay (seconds; throughput in tokens/s)."""

    label: str
    rate: float  # offered load, requests/s (inf: all at once)
    makespan: float  # first arrival to last token, idle jumps excluded
    output_tokens: int
    ttft: list[float]
    tpot: list[float]
    e2e: list[float]

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.makespan

    def p(self, metric: str, q: float) -> float:
        vals = getattr(self, metric)
        return percentiles(vals, [q])[q] if vals else math.nan


def replay(engine, requests: list[Request], arrivals: list[float], label: str = "",
           rate: float = math.inf) -> RunStats:
    """Submit request i at ``arrivals[i]`` seconds, stepping the engine meanwhile."""
    t0, skipped, k, seqs = time.perf_counter(), 0.0, 0, []
    _set_draining(engine, False)
    while k < len(requests) or engine.has_unfinished():
        now = time.perf_counter() - t0 + skipped  # the replay's clock
        while k < len(requests) and arrivals[k] <= now:
            r = requests[k]
            seqs.append(engine.add_request(r.prompt, r.max_tokens,
                                           arrival_time=t0 + arrivals[k] - skipped))
            k += 1
        _set_draining(engine, k == len(requests))
        n_records = len(engine.records)
        if engine.has_unfinished():
            engine.step()
        if len(engine.records) == n_records:  # nothing could run: jump to the next arrival
            if k == len(requests):
                raise RuntimeError("the engine made no progress with requests pending")
            gap = max(arrivals[k] - now, 0.0)
            skipped += gap
            for s in seqs:
                if not s.token_times:  # queued through the jump: it waited that long
                    s.arrival_time -= gap
    end = time.perf_counter() - t0 + skipped
    _set_draining(engine, False)
    return RunStats(label, rate, end - arrivals[0], sum(len(s.output) for s in seqs),
                    [s.ttft for s in seqs], [s.tpot for s in seqs if s.tpot is not None],
                    [s.e2e for s in seqs])


def rate_sweep(make_engines: dict[str, Callable[[], object]], requests: list[Request],
               rates: list[float], seed: int = 0, progress=None) -> dict[str, list[RunStats]]:
    """Replay the same requests at each arrival rate on a fresh engine of each kind.

    Every kind sees the same Poisson arrival times at a given rate, so the curves differ
    only by the batching policy. ``progress`` wraps the loop (e.g. ``tqdm``).
    """
    jobs = [(label, rate) for rate in rates for label in make_engines]
    out: dict[str, list[RunStats]] = {label: [] for label in make_engines}
    for label, rate in (progress(jobs) if progress else jobs):
        arrivals = poisson_arrivals(len(requests), rate, seed)
        out[label].append(replay(make_engines[label](), requests, arrivals, label, rate))
    return out


def make_requests(token_ids: list[int], n: int, prompt_len: tuple[int, int],
                  output_len: tuple[int, int], seed: int = 0,
                  shared_prefix: int = 0) -> list[Request]:
    """``n`` requests cut from a token stream (held-out code), with random lengths.

    Uniform prompt and output lengths in the given (low, high) ranges; mixed output
    lengths are what request-level batching handles badly. With ``shared_prefix`` > 0
    every prompt starts with the same first tokens (a system prompt).
    """
    rng = random.Random(seed)
    head = token_ids[:shared_prefix]
    out = []
    for _ in range(n):
        length = rng.randint(*prompt_len)
        start = rng.randrange(shared_prefix, len(token_ids) - length)
        out.append(Request(head + token_ids[start:start + length], rng.randint(*output_len)))
    return out
