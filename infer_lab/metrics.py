"""What an inference run costs: latency, throughput and memory.

Latency of one streamed request, from the time stamp t_i of each output token
(seconds since the request started):

    TTFT = t_0                              time to first token (prefill + 1 sample)
    TPOT = (t_{n-1} - t_0) / (n - 1)        time per output token after the first
    e2e  = t_{n-1}                          end-to-end latency
    tokens/s = n / e2e

A service is judged on its tail, not its mean, so labs report p50/p95/p99 over
requests (the percentiles interpolate linearly, like ``numpy.percentile``).

GPUs run asynchronously: a Python timer around a kernel launch measures the launch,
not the work. :class:`Timer` synchronizes the device before reading the clock.

Timing whole decodes (tokens/s of models side by side, the time of each token, prefill
against decode) is :mod:`infer_lab.timing`.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from .hardware import synchronize


class Timer:
    """Wall-clock seconds of a block, with the device synchronized at both ends.

        with Timer(model.device) as t:
            generate(model, prompts, 64)
        print(t.elapsed)
    """

    def __init__(self, device: torch.device | str | None = None):
        # None: synchronize whatever accelerator this machine has (a no-op on CPU).
        self.device = torch.device(device) if device is not None else None
        self.elapsed = math.nan

    def __enter__(self) -> "Timer":
        self._sync()  # work queued before the block must not be billed to it
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.elapsed = time.perf_counter() - self._t0

    def _sync(self) -> None:
        if self.device is None or self.device.type != "cpu":
            synchronize(self.device)


def time_call(fn, *, device: torch.device | str | None = None, warmup: int = 1,
              repeats: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()``, after ``warmup`` untimed calls.

    Warm-up calls pay one-off costs (allocator growth, lazy initialisation, caches) that
    a steady-state figure should not include.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times.append(t.elapsed)
    return times


# -- latency of one request --------------------------------------------------------------
@dataclass(frozen=True)
class RequestLatency:
    """Latency figures of one request (seconds; tokens_per_s in output tokens/s)."""

    ttft: float
    tpot: float  # nan when only one token was produced
    e2e: float
    n_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.e2e if self.e2e > 0 else math.nan

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def latency_from_times(times: Sequence[float]) -> RequestLatency:
    """RequestLatency from per-token time stamps (seconds since the request started)."""
    if not times:
        raise ValueError("no tokens were produced, so there is no latency to report")
    n = len(times)
    tpot = (times[-1] - times[0]) / (n - 1) if n > 1 else math.nan
    return RequestLatency(ttft=times[0], tpot=tpot, e2e=times[-1], n_tokens=n)


def latency_from_events(events: Iterable) -> RequestLatency:
    """RequestLatency from the :class:`~infer_lab.streaming.TokenEvent` list of ``stream``."""
    return latency_from_times([e.t for e in events])


# -- many requests ------------------------------------------------------------------------
def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)
                ) -> dict[float, float]:
    """{q: q-th percentile} with linear interpolation between order statistics.

    With n sorted values, percentile q sits at rank r = q/100 * (n - 1) and is
    v[floor(r)] + (r - floor(r)) * (v[ceil(r)] - v[floor(r)]), numpy's default.
    """
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("percentiles of an empty list")
    out = {}
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        r = q / 100 * (len(v) - 1)
        lo, hi = math.floor(r), math.ceil(r)
        out[q] = v[lo] + (r - lo) * (v[hi] - v[lo])
    return out


def summarize(latencies: Sequence[RequestLatency], qs: Sequence[float] = (50, 95, 99)
              ) -> dict[str, dict[str, float]]:
    """p50/p95/p99 (by default) of TTFT, TPOT, e2e and tokens/s over requests.

    -> {"ttft": {"p50": ..., "p95": ..., "p99": ...}, "tpot": {...}, ...}
    """
    out: dict[str, dict[str, float]] = {}
    for name in ("ttft", "tpot", "e2e", "tokens_per_s"):
        vals = [getattr(r, name) for r in latencies]
        vals = [x for x in vals if not math.isnan(x)]  # 1-token requests have no TPOT
        out[name] = ({f"p{q:g}": x for q, x in percentiles(vals, qs).items()} if vals
                     else {f"p{q:g}": math.nan for q in qs})
    return out


# -- memory ---------------------------------------------------------------------------------
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's stored weights: parameters and persistent buffers.

    Buffers count because quantized layers keep their packed weights and scales as
    buffers; tied tensors (embedding = lm_head) count once.
    """
    seen: set[int] = set()
    total = 0
    for t in model.state_dict(keep_vars=True).values():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class MemoryStats:
    """Peak memory: the process's resident set, and the GPU allocator's when on CUDA."""

    peak_rss_bytes: int
    cuda_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def peak_memory(device: torch.device | str | None = None) -> MemoryStats:
    """Peak resident memory of this process so far (and peak CUDA allocation).

    ``ru_maxrss`` is the high-water mark since the process started (kilobytes on Linux,
    bytes on macOS); it cannot be lowered, so compare it across processes, or use
    :func:`reset_peak_memory` for the CUDA figure between runs.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024
    cuda = None
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        cuda = torch.cuda.max_memory_allocated(device)
    return MemoryStats(peak_rss_bytes=int(rss), cuda_peak_bytes=cuda)


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a new CUDA peak-memory measurement (the RSS peak cannot be reset)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.reset_peak_memory_stats(device)


# -- one call for the labs --------------------------------------------------------------
@dataclass
class GenerationStats:
    """Per-request latencies, their percentiles and memory, from measure_generation."""

    requests: list[RequestLatency]
    summary: dict[str, dict[str, float]]
    weight_bytes: int
    memory: MemoryStats
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second over the requests run one after another."""
        return sum(r.n_tokens for r in self.requests) / sum(r.e2e for r in self.requests)


def measure_generation(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                       sampling=None, stop: list[str] | None = None,
                       warmup: int = 1, progress: bool = True) -> GenerationStats:
    """Stream each prompt in turn and measure TTFT, TPOT, e2e, tokens/s and memory.

    The first ``warmup`` prompts are run once untimed, so one-off costs do not land on
    the first request. EOS is ignored, so every request produces ``max_new_tokens``
    unless a stop string ends it.
    """
    from tqdm.auto import tqdm

    from .sampling import GREEDY
    from .streaming import stream

    sampling = sampling or GREEDY
    for p in list(prompts)[:warmup]:
        for _ in stream(model, tokenizer, p, max_new_tokens, sampling, stop,
                        stop_at_eos=False):
            pass
    reset_peak_memory(model.device)
    requests, texts = [], []
    for p in tqdm(prompts, desc="requests", disable=not progress or len(prompts) < 4):
        events = list(stream(model, tokenizer, p, max_new_tokens, sampling, stop,
                             stop_at_eos=False))
        synchronize(model.device)
        requests.append(latency_from_events(events))
        texts.append("".join(e.text for e in events))
    return GenerationStats(requests, summarize(requests), weight_bytes(model),
                           peak_memory(model.device), texts)
