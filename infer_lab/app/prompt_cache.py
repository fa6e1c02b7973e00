"""Prompt caching at the API: what the engine's prefix cache saves a client, in time and money.

The engine already keeps the KV blocks of every prompt it has seen, indexed by a hash of
their tokens (:mod:`infer_lab.serving.block_manager`: vLLM's automatic prefix caching,
SGLang's RadixAttention). A request whose prompt starts with those tokens (a shared
system prompt, or the earlier turns of its own conversation) skips their prefill: its time
to first token falls, and a provider prices those *cached* input tokens below the rest
(OpenAI's ``usage.prompt_tokens_details.cached_tokens``; discounts of 50-90% are
published). The cost of one request is

    cost = (prompt - cached) * p_in + cached * p_cached + completion * p_out

with the prices per token as parameters. :func:`measure` runs a workload through two
engines, prefix caching on and off, and reports both, request by request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..serving.engine import Engine, EngineConfig


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens. The defaults are round numbers of the published kind
    (cached input at a tenth of uncached input), not any provider's list."""

    input: float = 1.0
    cached_input: float = 0.1
    output: float = 4.0

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            if getattr(self, name) < 0:
                raise ValueError(f"price {name} must be >= 0, got {getattr(self, name)}")
        if self.cached_input > self.input:
            raise ValueError("cached input tokens cost more than uncached ones: "
                             f"{self.cached_input} > {self.input}")


def request_cost(prompt_tokens: int, cached_tokens: int, completion_tokens: int,
                 prices: Prices = Prices()) -> float:
    """Dollars for one request."""
    if not 0 <= cached_tokens <= prompt_tokens or completion_tokens < 0:
        raise ValueError(f"need 0 <= cached ({cached_tokens}) <= prompt ({prompt_tokens}) "
                         f"and completion ({completion_tokens}) >= 0")
    return ((prompt_tokens - cached_tokens) * prices.input + cached_tokens
            * prices.cached_input + completion_tokens * prices.output) / 1e6


@dataclass(frozen=True)
class Served:
    """One request of a workload, as the client sees it."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_s: float
    cost: float


def serve_one(engine: Engine, prompt: list[int], max_tokens: int, prices: Prices) -> tuple[
        Served, list[int]]:
    """Run one request alone to completion: its figures and its output tokens."""
    t0 = time.perf_counter()
    seq = engine.add_request(prompt, max_tokens)
    ttft, out = None, []
    while engine.has_unfinished():
        for o in engine.step():
            if o.token is not None and o.seq_id == seq.seq_id:
                ttft = time.perf_counter() - t0 if ttft is None else ttft
                out.append(o.token)
    cached = min(seq.num_cached_tokens, len(prompt))
    return Served(len(prompt), cached, len(out), ttft or 0.0,
                  request_cost(len(prompt), cached, len(out), prices)), out


def shared_prefix_workload(system: list[int], questions: Sequence[list[int]]
                           ) -> list[list[int]]:
    """One shared system prompt before each question."""
    return [list(system) + list(q) for q in questions]


def measure(model, prompts: Sequence[list[int]], max_tokens: int = 8,
            prices: Prices = Prices(), config: EngineConfig | None = None,
            turns: bool = False) -> dict[str, list[Served]]:
    """Each prompt in order, alone, through an engine with prefix caching and one without
    ({"cached": [...], "uncached": [...]}). ``turns``: a conversation; each prompt is then
    appended to the conversation so far (the previous prompts and answers), as a chat
    client resends it."""
    base = config or EngineConfig(num_blocks=1024)
    out: dict[str, list[Served]] = {}
    for label, on in (("cached", True), ("uncached", False)):
        engine = Engine(model, replace(base, enable_prefix_caching=on))
        history: list[int] = []
        rows = []
        for p in prompts:
            prompt = history + list(p) if turns else list(p)
            served, answer = serve_one(engine, prompt, max_tokens, prices)
            rows.append(served)
            history = prompt + answer
        out[label] = rows
    return out


def saving(rows: dict[str, list[Served]], skip_first: bool = True) -> dict[str, float]:
    """Cost saved and TTFT ratio, cached over uncached (the first request of a workload
    has nothing to reuse: ``skip_first`` leaves it out)."""
    a, b = (rows[k][1 if skip_first else 0:] for k in ("cached", "uncached"))
    if not a:
        raise ValueError("a workload of one request has nothing to reuse")
    cost_a, cost_b = sum(r.cost for r in a), sum(r.cost for r in b)
    ttft_a, ttft_b = sum(r.ttft_s for r in a), sum(r.ttft_s for r in b)
    return {"cost_saving": 1 - cost_a / cost_b if cost_b else 0.0,
            "ttft_ratio": ttft_a / ttft_b if ttft_b else 1.0,
            "cached_fraction": sum(r.cached_tokens for r in a) / sum(r.prompt_tokens for r in a)}
