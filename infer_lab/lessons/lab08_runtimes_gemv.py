"""Lab 08: the decode step compiled with the learner's batch-1 linear.

The learner writes ``gemv_reduction(x, weight, bias)``, a linear layer as a multiply and a
row sum (exercise ``gemv_reduction``). :class:`PluggedReductionLinear` is
:class:`infer_lab.runtimes.gemv.ReductionLinear` with that product passed in as an argument:
inside a compiled graph, at one row, it runs ``product``; anywhere else (the eager prefill,
an eager fallback) it is ``F.linear``, as the package's module is. :func:`compiled_decoder`
puts one in place of every ``nn.Linear`` of a shared copy of the model (no weight is
copied) and compiles its decode step (:class:`~infer_lab.runtimes.compiled.CompiledDecoder`
with its own reductions off: the learner's are in the model).

:func:`decode_speedup` then times that decoder against eager decoding, alternated, the
median kept (the number the prediction ``runtimes_compiled_speedup`` is graded against).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtimes.compiled import CompiledDecoder
from ..runtimes.gemv import ReductionLinear
from ..surgery import set_module, shared_copy

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class PluggedReductionLinear(ReductionLinear):
    """A ReductionLinear whose one-token product, when compiled, is ``product``."""

    def __init__(self, linear: nn.Linear, product: Product):
        super().__init__(linear)
        self.product = product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() or x.shape[:-1].numel() != 1:
            return F.linear(x, self.weight, self.bias)  # prefill: a GEMM reuses each weight
        return self.product(x, self.weight, self.bias)  # (..., 1, K) -> (..., 1, N)


def with_product(model: nn.Module, product: Product) -> nn.Module:
    """A shared copy of ``model`` with every ``nn.Linear`` (the tied head too) computing its
    compiled one-token product with ``product``."""
    copy = shared_copy(model)
    for name, mod in list(copy.named_modules()):
        if type(mod) is nn.Linear:
            set_module(copy, name, PluggedReductionLinear(mod, product))
    return copy


def compiled_decoder(model: nn.Module, max_len: int, product: Product) -> CompiledDecoder:
    """A batch-1 CompiledDecoder whose linears run ``product`` inside the graph."""
    return CompiledDecoder(with_product(model, product), batch=1, max_len=max_len,
                           reductions=False)


def decode_speedup(dec: CompiledDecoder, model: nn.Module, prompt: list[int], n: int,
                   repeats: int) -> dict[str, float]:
    """Median seconds of ``n`` greedy tokens, compiled (already warm) and eager, the runs
    alternated so that a busy machine slows both alike; and the speed-up."""
    from ..generate import generate

    runs = {"compiled": lambda: dec.generate([prompt], n),
            "eager": lambda: generate(model, [prompt], n, eos_id=None)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(max(repeats, 1)):
        for k, call in runs.items():
            t0 = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"compiled_tokens_per_s": n / med["compiled"], "eager_tokens_per_s": n / med["eager"],
            "speedup": med["eager"] / med["compiled"]}
