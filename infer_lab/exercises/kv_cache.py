"""Exercises of lab 01 (KV cache).

* decode_attention: one decode step of attention with a cache. The new token's query
  attends to every cached key plus its own:
  ``out_h = softmax(q_h [K_h; k_h]^T / sqrt(d)) [V_h; v_h]``.
* kv_cache_bytes: ``2 (K and V) * layers * kv_heads * head_dim * tokens * batch * bytes``.
  With grouped-query attention the cache has ``n_kv_head`` heads, not ``n_head``.
* sliding_window_mask: query i sees key j iff ``j <= i`` and ``i - j < window``, so each
  query sees at most ``window`` keys, itself included.
"""

from __future__ import annotations

import math
import random

import torch

from ..config import PRESETS, ModelConfig, get_config
from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.KV_CACHE  # the notebook's name


# -- references -------------------------------------------------------------------------
def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Attention output (H, D) of one new token.

    q, k_new, v_new: (H, D), the new token's query, key and value per head.
    k_cache, v_cache: (H, S, D), keys and values of the S earlier tokens.
    """
    k = torch.cat([k_cache, k_new[:, None, :]], dim=1)  # (H, S+1, D)
    v = torch.cat([v_cache, v_new[:, None, :]], dim=1)  # (H, S+1, D)
    scores = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(q.shape[-1])  # (H, S+1)
    weights = torch.softmax(scores, dim=-1)  # over the S+1 positions
    return (weights[:, :, None] * v).sum(dim=1)  # (H, D)


def kv_cache_bytes(cfg: ModelConfig, seq_len: int, batch: int, bytes_per_elem: float) -> float:
    """Bytes of the K and V cache of ``batch`` sequences of ``seq_len`` tokens."""
    per_token = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * bytes_per_elem
    return per_token * seq_len * batch


def sliding_window_mask(T: int, window: int) -> torch.Tensor:
    """Bool (T, T): entry [i, j] is True when query i may attend to key j."""
    i = torch.arange(T)[:, None]  # queries, down the rows
    j = torch.arange(T)[None, :]  # keys, across the columns
    return (j <= i) & (i - j < window)


# -- wrong answers a learner might write ----------------------------------------------------
def _attn_cache_only(q, k_new, v_new, k_cache, v_cache):
    scores = (k_cache @ q[:, :, None]).squeeze(-1) / math.sqrt(q.shape[-1])
    return (torch.softmax(scores, -1)[:, :, None] * v_cache).sum(1)


def _attn_no_scale(q, k_new, v_new, k_cache, v_cache):
    k = torch.cat([k_cache, k_new[:, None]], 1)
    v = torch.cat([v_cache, v_new[:, None]], 1)
    return (torch.softmax((k @ q[:, :, None]).squeeze(-1), -1)[:, :, None] * v).sum(1)


def _attn_softmax_heads(q, k_new, v_new, k_cache, v_cache):
    k = torch.cat([k_cache, k_new[:, None]], 1)
    v = torch.cat([v_cache, v_new[:, None]], 1)
    scores = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(q.shape[-1])
    return (torch.softmax(scores, 0)[:, :, None] * v).sum(1)


# -- cases ------------------------------------------------------------------------------
def _attn_case(H: int, S: int, D: int, seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return Case((r(H, D), r(H, D), r(H, D), r(H, S, D), r(H, S, D)))


def _random_attn_case(rng: random.Random) -> Case:
    return _attn_case(rng.randint(1, 8), rng.randint(0, 40), rng.choice([2, 4, 8, 16, 64]),
                      rng.randrange(2**31))


def _named(name: str, **overrides) -> ModelConfig:
    cfg = get_config(name, **overrides)
    cfg._preset_name = name  # shown in the checker's messages
    return cfg


def _random_kv_case(rng: random.Random) -> Case:
    cfg = _named(rng.choice(sorted(PRESETS)))
    return Case((cfg, rng.randint(1, cfg.max_seq_len), rng.randint(1, 64),
                 rng.choice([4, 2, 1, 0.5])))


def _random_window_case(rng: random.Random) -> Case:
    return Case((rng.randint(1, 40), rng.randint(1, 48)))


EXERCISES = [
    Exercise(
        "decode_attention", LAB, decode_attention,
        fixed_cases=[_attn_case(1, 0, 4, 0), _attn_case(2, 1, 4, 1), _attn_case(4, 7, 16, 2),
                     _attn_case(8, 32, 64, 3)],
        random_case=_random_attn_case,
        rtol=1e-4, atol=1e-5,
        hint="Append the new key and value to the cache (torch.cat along the sequence "
             "axis), score every key against q, scale by 1/sqrt(D), softmax over positions, "
             "then take the weighted sum of the values.",
        mistakes=[
            Mistake("cache only", _attn_cache_only,
                    "The new token attends to itself too: append k_new and v_new to the "
                    "cache before attending."),
            Mistake("no scale", _attn_no_scale,
                    "Scaled dot-product attention divides the scores by sqrt(head_dim)."),
            Mistake("softmax over heads", _attn_softmax_heads,
                    "Normalise over positions (the last axis of the scores), not over heads."),
        ],
    ),
    Exercise(
        "kv_cache_bytes", LAB, kv_cache_bytes,
        fixed_cases=[Case((_named("llama-3-8b"), 8192, 1, 2)),
                     Case((_named("llama-2-7b"), 4096, 1, 2)),
                     Case((_named("code-m"), 1024, 4, 4)),
                     Case((_named("qwen2.5-0.5b"), 1, 1, 1))],
        random_case=_random_kv_case,
        hint="Per token and layer the cache holds one key and one value vector for each "
             "KV head: 2 * n_kv_head * head_dim elements.",
        mistakes=[
            Mistake("K only", lambda c, s, b, e: c.n_layer * c.n_kv_head * c.head_dim * s * b * e,
                    "The cache stores keys AND values: multiply by 2."),
            Mistake("n_head", lambda c, s, b, e: 2 * c.n_layer * c.n_head * c.head_dim * s * b * e,
                    "With grouped-query attention only n_kv_head heads have keys and values "
                    "(several query heads share one): use cfg.n_kv_head."),
            Mistake("no batch", lambda c, s, b, e: 2 * c.n_layer * c.n_kv_head * c.head_dim * s * e,
                    "Every sequence in the batch has its own cache: multiply by batch."),
            Mistake("one layer", lambda c, s, b, e: 2 * c.n_kv_head * c.head_dim * s * b * e,
                    "Every layer has its own K and V: multiply by n_layer."),
        ],
    ),
    Exercise(
        "sliding_window_mask", LAB, sliding_window_mask,
        fixed_cases=[Case((1, 1)), Case((5, 1)), Case((6, 3)), Case((4, 10)), Case((8, 8))],
        random_case=_random_window_case,
        hint="Row i is the query, column j the key. Keep j <= i (no peeking ahead) and "
             "i - j < window (a window of W keys includes the query's own position).",
        mistakes=[
            Mistake("off by one", lambda T, w: (torch.arange(T)[None] <= torch.arange(T)[:, None])
                    & (torch.arange(T)[:, None] - torch.arange(T)[None] <= w),
                    "Off by one: with i - j <= window each query sees window + 1 keys. "
                    "Use i - j < window."),
            Mistake("not causal", lambda T, w: (torch.arange(T)[:, None]
                                                - torch.arange(T)[None]).abs() < w,
                    "A query must not see later keys: also require j <= i."),
            Mistake("transposed", lambda T, w: sliding_window_mask(T, w).T,
                    "Rows are queries and columns keys: entry [i, j] is query i, key j."),
        ],
    ),
]
