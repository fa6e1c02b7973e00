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

Decode timing, at the end: tokens/s of models timed side by side
(:func:`decode_tokens_per_s`), the time of each token (:func:`time_decode`), prefill
against decode throughput (:func:`time_prefill_decode`); the labs' explorers re-run them.
"""

from __future__ import annotations

import math
import resource
import statistics
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
    """RequestLatency from the :class:`~infer_lab.generate.TokenEvent` list of ``stream``."""
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

    from .generate import GREEDY, stream

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


# -- decode timing: what the labs' explorers re-run ---------------------------------------
@torch.inference_mode()
def decode_tokens_per_s(models: dict[str, torch.nn.Module], prompt: list[int], n_tokens: int,
                        repeats: int, batch: int = 1, progress: bool = True) -> dict[str, float]:
    """Greedy decode throughput of each model: output tokens/s over ``batch`` copies of
    ``prompt`` (prefill included), the median of ``repeats`` timed runs.

    The models alternate (A B C A B C ...), so a slow phase of a busy machine lands on
    all of them, each after a short untimed warm-up (one-off costs do not grow with the
    length). EOS does not end a run early: every row produces ``n_tokens``. The median,
    not the fastest run, is what the benchmarks report (``python -m infer_lab.bench
    quant``, ``compress``), so a lab's figure and the README's compare.
    """
    from tqdm.auto import tqdm

    from .bench import interleaved_times
    from .generate import GREEDY, generate

    prompts = [list(prompt)] * batch
    for m in models.values():
        generate(m, prompts, min(n_tokens, 4), GREEDY, eos_id=None)
    fns = {k: (lambda m=m: generate(m, prompts, n_tokens, GREEDY, eos_id=None))
           for k, m in models.items()}
    device = next(iter(models.values())).device
    with tqdm(total=len(fns) * repeats, desc="decode timing", disable=not progress,
              leave=False) as bar:
        times = interleaved_times(fns, repeats, 0, device, bar)
    return {k: batch * n_tokens / statistics.median(t) for k, t in times.items()}


def time_decode(model, prompt: list[int], n_tokens: int, use_cache: bool = True,
                window: int | None = None, warmup: int = 4, progress: bool = True
                ) -> tuple[list[int], list[float]]:
    """(position, seconds) of each of ``n_tokens`` generated tokens, greedy.

    With the cache the first token includes the prefill of the prompt. Without it
    every step re-runs the whole sequence so far. ``warmup`` untimed steps first pay
    one-off costs (allocations, lazy initialisation) that would distort the first points.
    """
    from tqdm.auto import tqdm

    from .generate import decode_steps, decode_steps_no_cache
    from .kv_cache import KVCache

    if window and not use_cache:
        raise ValueError("a sliding window needs the cache")

    def steps(n: int):
        if not use_cache:
            return decode_steps_no_cache(model, [prompt], n)
        cache = KVCache.for_model(model, 1, window=window) if window else None
        return decode_steps(model, [prompt], n, cache=cache)

    for _ in steps(min(warmup, n_tokens)):
        pass
    label = f"window {window}" if window else "with cache" if use_cache else "no cache"
    secs = []
    synchronize(model.device)
    t0 = time.perf_counter()
    for _ in tqdm(steps(n_tokens), total=n_tokens, desc=label, disable=not progress,
                  leave=False):
        synchronize(model.device)
        t = time.perf_counter()
        secs.append(t - t0)
        t0 = t
    return [len(prompt) + i for i in range(len(secs))], secs


def time_prefill_decode(model, prompt: list[int], lengths: Sequence[int], repeats: int = 3,
                        decode_steps: int = 8, progress: bool = True) -> dict[str, list[float]]:
    """Prefill and decode throughput (tokens/s) at each context length.

    prefill: L tokens in one forward; decode: median seconds of one step with L tokens
    already in the cache. ``prompt`` is cut (or tiled) to each length.
    """
    from tqdm.auto import tqdm

    from .generate import decode_one_token, prefill
    from .kv_cache import KVCache

    out: dict[str, list[float]] = {"prefill": [], "decode": []}
    for L in tqdm(lengths, desc="lengths", disable=not progress, leave=False):
        ids = (prompt * (L // len(prompt) + 1))[:L]
        pre, dec = [], []
        for _ in range(repeats + 1):  # the first run warms up, untimed
            cache = KVCache.for_model(model, 1, max_len=L + decode_steps)
            with Timer(model.device) as t:
                logits = prefill(model, [ids], cache)
            pre.append(t.elapsed)
            tok = logits.argmax(-1)
            for _ in range(decode_steps):
                with Timer(model.device) as t:
                    tok = decode_one_token(model, tok, cache).argmax(-1)
                dec.append(t.elapsed)
        out["prefill"].append(L / statistics.median(pre[1:]))
        out["decode"].append(1 / statistics.median(dec[decode_steps:]))
    return out
