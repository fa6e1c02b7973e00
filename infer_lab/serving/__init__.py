"""Serving many requests at once: continuous batching over a paged KV cache.

    Sequence       per-request state: tokens, cache bookkeeping, timings   (sequence.py)
    BlockManager   KV blocks: free list, ref counts, prefix cache          (block_manager.py)
    Scheduler      waiting/running queues, token budget, preemption        (scheduler.py)
    PagedKVCache   the block pool, read through block tables by the model  (paged_attention.py)
    ModelRunner    a step's chunks -> at most two batched forwards         (model_runner.py)
    Engine         add_request / step / abort, step records, KV usage      (engine.py)
    StaticBatcher, DynamicBatcher   the baselines continuous batching beats (baselines.py)
"""

from .baselines import DynamicBatcher, StaticBatcher
from .block_manager import BlockManager
from .engine import Engine, EngineConfig, KVUsage, StepRecord, TokenOutput
from .model_runner import ModelRunner
from .paged_attention import PagedKVCache, paged_attention
from .scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from .sequence import Sequence, Status

__all__ = ["DynamicBatcher", "StaticBatcher", "BlockManager", "Engine", "EngineConfig", "KVUsage", "StepRecord", "TokenOutput",
           "ModelRunner", "PagedKVCache", "paged_attention", "ScheduledChunk", "Scheduler",
           "SchedulerOutput", "Sequence", "Status"]
