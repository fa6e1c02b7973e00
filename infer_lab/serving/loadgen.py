"""A load generator: Poisson arrivals of held-out-code requests, latency percentiles, goodput.

Arrivals. An open-loop client sends requests at times that do not depend on the server
(real users do not wait for each other): a Poisson process of rate lambda, whose gaps
are exponential,

    t_i = t_{i-1} + Exp(lambda),   P(gap > s) = exp(-lambda s),   E[gap] = 1 / lambda.

A closed-loop client keeps ``concurrency`` requests in flight and sends the next one
when one finishes, so it can never overload the server (and hides queueing delay).

Requests come from held-out standard-library code: the prompt is the code up to and
including a ``def`` line, and the output length is the real length, in tokens, of
that function's body, clipped to ``output_len`` (so the length distribution is the one
in the data: right-skewed, many short functions and a few long ones).

Report, per request: TTFT (arrival -> first token, queueing included), TPOT (mean gap
after the first token), end-to-end latency; over the run p50/p95/p99 of each, output
tokens/s, requests/s, and goodput (DistServe, Zhong et al. 2024): the rate of requests
that meet the latency objectives,

    goodput = #{i : ttft_i <= SLO_ttft and tpot_i <= SLO_tpot} / duration.

``run_engine`` replays arrivals against the wall clock between engine steps (a request
whose arrival falls inside a running step is submitted after it, but its TTFT counts
from its arrival); ``run_http`` sends the same workload to the HTTP server.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .interface import ServingEngine
from ..metrics import percentiles

_DEF = re.compile(r"^([ \t]*)(?:async\s+)?def ", re.MULTILINE)


@dataclass
class Request:
    arrival: float  # seconds after the start of the run
    prompt: list[int]
    max_tokens: int


@dataclass
class RequestResult:
    arrival: float  # absolute, perf_counter seconds
    ttft: float | None
    tpot: float | None
    e2e: float | None
    tokens: int
    prompt_tokens: int
    finish_time: float | None


@dataclass
class LoadReport:
    results: list[RequestResult]
    start: float
    end: float
    rejected: int = 0  # HTTP 429s
    kv: list[Any] = field(default_factory=list)  # engine.kv_usage() after each step

    @property
    def duration(self) -> float:
        return self.end - self.start

    def summary(self, slo_ttft: float | None = None, slo_tpot: float | None = None
                ) -> dict[str, Any]:
        """p50/p95/p99 of ttft, tpot, e2e (s); tokens/s, requests/s, goodput (req/s)."""
        done = [r for r in self.results if r.tokens > 0]
        out: dict[str, Any] = {"requests": len(done), "rejected": self.rejected,
                               "duration_s": self.duration,
                               "output_tokens": sum(r.tokens for r in done)}
        for name in ("ttft", "tpot", "e2e"):
            vals = [getattr(r, name) for r in done if getattr(r, name) is not None]
            out[name] = ({f"p{q:g}": v for q, v in percentiles(vals).items()} if vals
                         else {p: math.nan for p in ("p50", "p95", "p99")})
        dur = max(self.duration, 1e-9)
        out["tokens_per_s"] = out["output_tokens"] / dur
        out["requests_per_s"] = len(done) / dur
        good = [r for r in done
                if (slo_ttft is None or r.ttft <= slo_ttft)
                and (slo_tpot is None or r.tpot is None or r.tpot <= slo_tpot)]
        out["goodput"] = len(good) / dur
        out["slo"] = {"ttft": slo_ttft, "tpot": slo_tpot}
        return out


# -- workloads ---------------------------------------------------------------------------
def poisson_arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    """n arrival offsets (s) of a Poisson process; rate = inf puts all of them at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += 0.0 if math.isinf(rate) else rng.expovariate(rate)
    return out


def _function_samples(text: str) -> list[tuple[int, int]]:
    """(end of the def line, end of the body) for every function in ``text``."""
    out = []
    lines_end = [m.end() for m in re.finditer(r".*\n", text)]
    for m in _DEF.finditer(text):
        indent, line_end = len(m.group(1)), text.find(":\n", m.end())
        if line_end < 0:
            continue
        line_end += 2
        body_end = line_end
        for end in lines_end:  # the body runs until a line indented no deeper than the def
            if end <= line_end:
                continue
            line = text[body_end:end]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body_end = end
        out.append((line_end, body_end))
    return out


def make_workload(tokenizer: Any, n: int, rate: float = math.inf, seed: int = 0,
                  output_len: tuple[int, int] = (16, 512),
                  prompt_chars: tuple[int, int] = (200, 1200),
                  shared_prefix: str | None = None, max_seq_len: int = 1024,
                  source: list[str] | None = None) -> list[Request]:
    """``n`` requests from held-out code with Poisson arrivals at ``rate`` requests/s.

    shared_prefix: text put before every prompt (a long system prompt) so that requests
    share their first blocks, for prefix caching. ``source``: texts to draw from (default:
    the held-out standard-library files).
    """
    from ..zoo.data import iter_files

    rng = random.Random(seed)
    texts = source if source is not None else [f.text for f in iter_files("valid")]
    samples = [(t, a, b) for t in texts for a, b in _function_samples(t) if a > 0]
    if not samples:
        raise ValueError("no functions found in the source texts")
    prefix = tokenizer.encode(shared_prefix) if shared_prefix else []
    if len(prefix) + output_len[0] >= max_seq_len:
        raise ValueError(f"shared prefix of {len(prefix)} tokens leaves no room in the "
                         f"context of {max_seq_len}")
    lo, hi = output_len
    reqs = []
    for arrival in poisson_arrivals(n, rate, rng):
        text, a, b = rng.choice(samples)
        chars = rng.randint(*prompt_chars)
        code = tokenizer.encode(text[max(0, a - chars):a])
        body = len(tokenizer.encode(text[a:b]))
        max_tokens = min(max(body, lo), hi, max_seq_len - len(prefix) - 1)
        keep = max_seq_len - len(prefix) - max_tokens  # cut the code's start, never the def
        reqs.append(Request(arrival, prefix + code[-keep:], max_tokens))
    return reqs


# -- in process --------------------------------------------------------------------------
def _result(seq: Any) -> RequestResult:
    return RequestResult(seq.arrival_time, seq.ttft, seq.tpot, seq.e2e, len(seq.output),
                         len(seq.prompt), seq.finish_time)


def run_engine(engine: ServingEngine, workload: list[Request], mode: str = "open",
               concurrency: int = 8, progress: bool = False) -> LoadReport:
    """Drive an Engine, StaticBatcher or DynamicBatcher; greedy, EOS ignored (fixed lengths).

    open: submit each request at its arrival offset on the wall clock. closed: keep
    ``concurrency`` requests in flight, ignoring the offsets. ``engine`` needs
    ``add_request``, ``step``, ``has_unfinished`` and ``num_steps``; ``kv_usage()`` is
    sampled after every step when it exists, and ``draining`` is set once the last
    request is in (so a static batcher may start its last, partial batch).
    """
    if mode not in ("open", "closed"):
        raise ValueError(f"mode must be 'open' or 'closed', got {mode!r}")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(workload), desc=type(engine).__name__, leave=False)
    pending = deque(sorted(workload, key=lambda r: r.arrival) if mode == "open" else workload)
    seqs, live, kv = [], [], []
    t0 = time.perf_counter()

    def submit(r: Request, at: float) -> None:
        s = engine.add_request(r.prompt, r.max_tokens, arrival_time=at)
        seqs.append(s)
        live.append(s)

    if mode == "closed":
        for _ in range(min(concurrency, len(pending))):
            submit(pending.popleft(), time.perf_counter())
    while pending or engine.has_unfinished():
        if mode == "open":
            now = time.perf_counter() - t0
            while pending and pending[0].arrival <= now:
                r = pending.popleft()
                submit(r, t0 + r.arrival)
        if not pending:
            engine.set_draining(True)  # a static batcher may now start a partial batch
        before = engine.num_steps  # a step can run (a prompt chunk) and return no token
        if engine.has_unfinished():
            engine.step()
        ran = engine.num_steps != before
        usage = engine.kv_usage() if ran else None
        if usage is not None:
            kv.append(usage)
        done = [s for s in live if s.is_finished]
        if done:
            live[:] = [s for s in live if not s.is_finished]
            if bar is not None:
                bar.update(len(done))
            if mode == "closed":
                for _ in done:
                    if pending:
                        submit(pending.popleft(), time.perf_counter())
        if not ran and pending and mode == "open":  # idle until the next arrival
            time.sleep(max(0.0, min(0.01, pending[0].arrival - (time.perf_counter() - t0))))
    engine.set_draining(False)
    if bar is not None:
        bar.close()
    end = max((s.finish_time for s in seqs if s.finish_time), default=time.perf_counter())
    start = min((s.arrival_time for s in seqs), default=t0)
    return LoadReport([_result(s) for s in seqs], start, end, kv=kv)


# -- over HTTP ---------------------------------------------------------------------------
async def _one(client: Any, url: str, r: Request, arrival: float) -> RequestResult | None:
    body = {"prompt": r.prompt, "max_tokens": r.max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    times: list[float] = []
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code == 429:
            return None
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                times.append(time.perf_counter())  # one event per generated token
    n = len(times)
    return RequestResult(arrival, times[0] - arrival if n else None,
                         (times[-1] - times[0]) / (n - 1) if n > 1 else None,
                         times[-1] - arrival if n else None, n, len(r.prompt),
                         times[-1] if n else None)


async def run_http_async(url: str, workload: list[Request], mode: str = "open",
                         concurrency: int = 8) -> LoadReport:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)

        async def open_loop(r: Request) -> RequestResult | None:
            await asyncio.sleep(max(0.0, t0 + r.arrival - time.perf_counter()))
            return await _one(client, url, r, t0 + r.arrival)

        async def closed_loop(r: Request) -> RequestResult | None:
            async with gate:
                return await _one(client, url, r, time.perf_counter())

        fn = open_loop if mode == "open" else closed_loop
        out = await asyncio.gather(*(fn(r) for r in workload))
    results = [r for r in out if r is not None]
    end = max((r.finish_time for r in results if r.finish_time), default=time.perf_counter())
    start = min((r.arrival for r in results), default=t0)
    return LoadReport(results, start, end, rejected=len(out) - len(results))


def run_http(url: str, workload: list[Request], mode: str = "open",
             concurrency: int = 8) -> LoadReport:
    """Send the workload to a running server (streaming); 429s are counted, not retried."""
    if mode not in ("open", "closed"):
        raise ValueError(f"mode must be 'open' or 'closed', got {mode!r}")
    return asyncio.run(run_http_async(url, workload, mode, concurrency))
