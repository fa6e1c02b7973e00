"""The serving bench's outside baseline: transformers' ``generate``, one request at a time.

The same weights as our engines (:func:`infer_lab.hf_export.to_hf`), greedy, EOS ignored,
each request run to its ``max_tokens`` while a streamer timestamps every new token, so
its TTFT and TPOT are measured the way the engines' are and the result is the same
:class:`~infer_lab.serving.loadgen.LoadReport`. Back to back, with no queueing: this is
what serving costs without batching.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch


class TokenTimes:
    """A transformers streamer that timestamps each new token (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_sequential(model, work: list, rng: random.Random, n: int) -> tuple[Any, list]:
    """transformers' copy of ``model``, warmed up, and ``n`` random requests of ``work``
    for it (drawn from ``rng``)."""
    from ..hf_export import to_hf

    subset = rng.sample(work, min(n, len(work)))
    hf = to_hf(model)
    hf.generate(torch.tensor([subset[0].prompt[:8]]), max_new_tokens=2, do_sample=False,
                pad_token_id=0)  # warm-up
    return hf, subset


def run_sequential(hf, workload) -> Any:
    """transformers' ``generate`` (``hf``, warmed up) over the workload, one at a time."""
    from ..serving.loadgen import LoadReport, RequestResult

    results, busy = [], 0.0
    for r in workload:
        st, t0 = TokenTimes(), time.perf_counter()
        hf.generate(torch.tensor([r.prompt]), max_new_tokens=r.max_tokens,
                    min_new_tokens=r.max_tokens, do_sample=False, eos_token_id=None,
                    pad_token_id=0, streamer=st)
        n, tt = len(st.times), st.times
        results.append(RequestResult(t0, tt[0] - t0, (tt[-1] - tt[0]) / (n - 1) if n > 1 else None,
                                     tt[-1] - t0, n, len(r.prompt), tt[-1]))
        busy += tt[-1] - t0
    # One request at a time, back to back: no queueing, duration = the sum of the runs.
    return LoadReport(results, 0.0, busy)
