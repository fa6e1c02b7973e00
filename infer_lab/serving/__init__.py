"""Serving many requests at once: continuous batching over a paged KV cache.

    Sequence       per-request state: tokens, cache bookkeeping, timings   (sequence.py)
    BlockManager   KV blocks: free list, ref counts, prefix cache          (block_manager.py)
    Scheduler      waiting/running queues, token budget, preemption        (scheduler.py)
    PagedKVCache   the block pool; prepare() gives a forward's PagedBatch   (paged_attention.py)
    ModelRunner    a step's chunks -> at most two batched forwards         (model_runner.py)
    Engine         add_request / step / abort, step records, KV usage      (engine.py)
    StaticBatcher, DynamicBatcher   the baselines continuous batching beats (baselines.py)
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so importing the plain-Python parts
# (infer_lab.serving.sequence, .scheduler, .block_manager) loads no torch.
_HOMES = {
    "DynamicBatcher": "baselines", "StaticBatcher": "baselines",
    "BlockManager": "block_manager",
    "Engine": "engine", "EngineConfig": "engine", "KVUsage": "engine",
    "StepRecord": "engine", "TokenOutput": "engine",
    "ModelRunner": "model_runner",
    "PagedKVCache": "paged_attention",
    "ScheduledChunk": "scheduler", "Scheduler": "scheduler", "SchedulerOutput": "scheduler",
    "Sequence": "sequence", "Status": "sequence",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
