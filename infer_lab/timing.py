"""Timing decodes: tokens/s of models side by side, each token's time, prefill vs decode.

    decode_tokens_per_s   greedy tokens/s of several models, runs alternated, the median
    time_decode           the seconds of each generated token (with, without the cache)
    time_prefill_decode   prefill and decode throughput at each context length

The numbers the labs' explorers re-run and the benchmarks quote. Each synchronizes the
device before reading the clock (:class:`~infer_lab.metrics.Timer`) and runs untimed
warm-up first, so one-off costs (allocation, lazy initialisation) land on no point.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from .hardware import synchronize
from .metrics import Timer


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
