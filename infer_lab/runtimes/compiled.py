"""torch.compile of the decode step: one graph, compiled once, replayed for every token.

At batch 1 a small model's decode step is mostly overhead: hundreds of small kernels
launched from Python, each reading a few KB (code-m) — the "overhead-bound" regime of
gpt-fast. Compiling the step traces the model once into one graph, fuses the elementwise
chains around each matmul (norms, RoPE, SwiGLU, the residual adds), and runs it from
generated code: inductor's C++ on a CPU, Triton kernels replayed as a CUDA graph on a GPU
(``mode="reduce-overhead"``), so Python launches nothing per op.

Two rules make it pay:

* **static shapes**: the step reads a :class:`~.static_cache.StaticKVCache` (slot =
  position, attention over all slots with a mask), so every step has the same shapes and
  the graph compiles once (:attr:`CompiledDecoder.graphs` counts them; a recompile at
  every token would cost seconds per token);
* **compile once, serve many tokens**: compiling takes seconds to minutes (a cold start);
  inductor caches what it built on disk (``TORCHINDUCTOR_CACHE_DIR``), so a second process
  starts warm. :func:`break_even_tokens` is the number of tokens after which compiling
  was worth it.

Prefill runs eagerly through the same cache (its length changes with every prompt).
Greedy tokens equal eager decoding's (tests/test_runtimes_compiled.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

import torch

from ..generate import (
    GREEDY,
    Sampling,
    check_decoding,
    check_prompts,
    collect,
    make_generator,
    prefill,
    sample,
)
from ..model import Transformer
from .gemv import reduction_linears
from .static_cache import StaticKVCache


def graph_count() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledDecoder:
    """A model's decode step compiled for ``batch`` rows and ``max_len`` positions.

        dec = CompiledDecoder(model, batch=1, max_len=len(prompt) + 64)
        tokens = dec.generate([prompt], 64)     # the first call compiles (cold start)
        dec.compile_seconds, dec.graphs         # what the cold start cost; graphs compiled

    ``mode``: torch.compile's mode; default "reduce-overhead" (CUDA graphs) on a GPU; on a
    CPU the default is inductor with frozen weights and a C++ wrapper. ``reductions``:
    compute each linear of a batch-1 step as a fused multiply-and-sum that streams its
    weight once (:mod:`.gemv`); default on for a CPU at batch 1, where MKL's GEMM at one
    row reads weights at a third of the memory's speed. If the backend cannot build (no
    C++ compiler, no Triton), the decoder warns once and decodes eagerly through the same
    static cache.
    """

    def __init__(self, model: Transformer, batch: int, max_len: int,
                 mode: str | None = None, reductions: bool | None = None):
        self.model = model.eval()
        self.batch, self.max_len = batch, max_len
        if reductions is None:
            reductions = model.device.type == "cpu" and batch == 1
        self.reductions = reductions
        # What the compiled step runs: the same weights, shared (a copy of the module tree).
        self._model = reduction_linears(self.model) if reductions else self.model
        self.cache = StaticKVCache.for_model(model, batch, max_len)
        self.mode = mode if mode is not None else (
            "reduce-overhead" if model.device.type == "cuda" else None)
        # CPU: freeze the weights into the graph (constants: inductor packs them for its
        # matmuls once) and call the kernels from C++ (no Python per kernel). On code-m,
        # once, on a busy machine: default 1.14-1.24x eager, both options 1.37-1.69x; the
        # batch-1 reductions of .gemv take it to 2.4-2.9x (bench runtimes). A frozen graph
        # does not see later changes to the weights: build a new decoder after editing it.
        how = ({"mode": self.mode} if self.mode is not None or model.device.type == "cuda"
               else {"options": {"freezing": True, "cpp_wrapper": True}})
        self._run = torch.compile(self._step, fullgraph=True, dynamic=False, **how)
        self.compiled = True  # False once it fell back to eager
        self.compile_seconds: float | None = None  # the first step's time: trace + build
        self.graphs = 0  # graphs compiled for this decoder: 1 means no recompilation
        self.fallback_reason: str | None = None

    def _step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._model(tok, self.cache, pos)[:, -1]  # (B, V)

    @torch.inference_mode()
    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the token after ``tok`` (B, 1) at positions ``pos`` (B, 1)."""
        # Made here, in inference mode: a graph is specialised on its inputs' dispatch keys,
        # and a token sampled outside inference mode would otherwise recompile it once.
        tok, pos = tok.clone(), pos.clone()
        before, t0 = graph_count(), time.perf_counter()
        try:
            logits = self._run(tok, pos)
        except Exception as e:  # noqa: BLE001 - any build failure: eager, and say why
            if not self.compiled:
                raise
            self._fall_back(e)
            return self._run(tok, pos)
        new = graph_count() - before
        if new and self.compile_seconds is None:
            if logits.device.type == "cuda":
                torch.cuda.synchronize()
            self.compile_seconds = time.perf_counter() - t0
        self.graphs += new
        return logits.clone()  # a CUDA graph reuses its output buffer on the next replay

    def _fall_back(self, e: Exception) -> None:
        self.compiled, self._run = False, self._step
        self.fallback_reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        warnings.warn(f"torch.compile could not build the decode step, decoding eagerly "
                      f"instead ({self.fallback_reason})", stacklevel=3)

    def decode_steps(self, prompts: list[list[int]], max_new_tokens: int,
                     sampling: Sampling = GREEDY) -> Iterator[torch.Tensor]:
        """Yield the next token of every row (B,) at each step: eager prefill, then the
        compiled step with positions counted on the device."""
        prompts = check_prompts(self.model, prompts, max_new_tokens)
        check_decoding(self.model, sampling, None)
        if len(prompts) != self.batch:
            raise ValueError(f"this decoder was compiled for {self.batch} rows, got "
                             f"{len(prompts)} prompts")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_len:
            raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new ones do not "
                             f"fit the static cache of {self.max_len} positions")
        if max_new_tokens == 0:
            return
        self.cache.reset()
        gen = make_generator(sampling, self.model.device)
        with torch.inference_mode():
            tok = sample(prefill(self.model, prompts, self.cache), sampling, gen)
        # Row b's next position: its prompt length (left padding does not count).
        pos = torch.tensor([[len(p)] for p in prompts], device=self.model.device)  # (B, 1)
        yield tok
        for _ in range(max_new_tokens - 1):
            tok = sample(self.step(tok[:, None], pos), sampling, gen)
            pos = pos + 1
            yield tok

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling = GREEDY, eos_id: int | None = None) -> list[list[int]]:
        """New tokens for each prompt, as :func:`infer_lab.generate.generate` returns them."""
        check_decoding(self.model, sampling, eos_id)
        steps = self.decode_steps(prompts, max_new_tokens, sampling)
        return collect(steps, len(prompts), max_new_tokens, eos_id)


def break_even_tokens(compile_seconds: float, eager_s_per_token: float,
                      compiled_s_per_token: float) -> float:
    """Tokens to decode before compiling has paid for itself: compile time over the time
    each token saves (infinite when compiling saves nothing)."""
    saved = eager_s_per_token - compiled_s_per_token
    return compile_seconds / saved if saved > 0 else float("inf")
