"""Exercises of lab 01 (KV cache).

* decode_attention (technique): one decode step of attention with a cache. The new
  token's query attends to every cached key plus its own:
  ``out_h = softmax(q_h [K_g; k_g]^T / sqrt(d)) [V_g; v_g]`` where, under grouped-query
  attention (Ainslie et al. 2023), query head h reads KV head g = h // (H / H_kv). The
  checker has GQA and MQA cases, and scores in the thousands: an exp without the max
  shift overflows there and fails. The lab then decodes code-m through the learner's
  function (:class:`infer_lab.lessons.lab01_attention.PluggedAttentionCache`).
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
from .predictions import Prediction

LAB = catalog.KV_CACHE  # the notebook's name


# -- references -------------------------------------------------------------------------
def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Attention output (H, D) of one new token (scaled dot-product attention with GQA).

    q: (H, D), the new token's query per head; k_new, v_new: (H_kv, D), its key and
    value per KV head; k_cache, v_cache: (H_kv, S, D), those of the S earlier tokens.
    H is a multiple of H_kv: query heads h*g .. h*g + g - 1 share KV head h (g = H / H_kv).
    """
    H, D = q.shape
    group = H // k_new.shape[0]  # query heads per KV head: 1 for multi-head attention
    k = torch.cat([k_cache, k_new[:, None, :]], dim=1)  # (H_kv, S+1, D)
    v = torch.cat([v_cache, v_new[:, None, :]], dim=1)  # (H_kv, S+1, D)
    k = k.repeat_interleave(group, dim=0)  # (H, S+1, D): contiguous groups share a KV head
    v = v.repeat_interleave(group, dim=0)  # (H, S+1, D)
    scores = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(D)  # (H, S+1)
    weights = torch.softmax(scores, dim=-1)  # over positions; subtracts the max first
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
def _attend(q, k_new, v_new, k_cache, v_cache, *, new=True, scale=None, axis=-1,
            tile=False, naive=False):
    """Decode attention with one chosen slip (each keyword names one)."""
    k = torch.cat([k_cache, k_new[:, None]], 1) if new else k_cache
    v = torch.cat([v_cache, v_new[:, None]], 1) if new else v_cache
    g = q.shape[0] // k.shape[0]
    k = k.repeat(g, 1, 1) if tile else k.repeat_interleave(g, 0)
    v = v.repeat(g, 1, 1) if tile else v.repeat_interleave(g, 0)
    s = (k @ q[:, :, None]).squeeze(-1) / (math.sqrt(q.shape[-1]) if scale is None else scale)
    if naive:
        w = s.exp() / s.exp().sum(axis, keepdim=True)  # overflows for scores above ~88
    else:
        w = torch.softmax(s, axis)
    return (w[:, :, None] * v).sum(1)


def _attn_cache_only(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, new=False)


def _attn_no_scale(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, scale=1.0)


def _attn_scale_by_d(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, scale=float(q.shape[-1]))


def _attn_softmax_heads(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, axis=0)


def _attn_tiled_heads(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, tile=True)


def _attn_naive_exp(q, k_new, v_new, k_cache, v_cache):
    return _attend(q, k_new, v_new, k_cache, v_cache, naive=True)


_OVERFLOW_HINT = ("Your answer has inf or NaN where the scores are large: exp(1000) overflows "
                  "to inf and inf / inf is NaN. Subtract each head's largest score before "
                  "the exp (it cancels in the normalisation, and every exponent is then <= 0), "
                  "or let softmax do it.")


class _AttentionExercise(Exercise):
    """decode_attention: inf or NaN where the reference is finite is the overflow of an
    unshifted exp, whatever the other entries are."""

    def diagnose(self, case: Case, got):
        if isinstance(got, torch.Tensor) and torch.is_floating_point(got) and not bool(
                torch.isfinite(got).all()):
            return _OVERFLOW_HINT
        return super().diagnose(case, got)


# -- cases ------------------------------------------------------------------------------
def _attn_case(H: int, S: int, D: int, seed: int, H_kv: int | None = None,
               scale: float = 1.0, dtype: torch.dtype = torch.float32) -> Case:
    """q (H, D); k_new, v_new (H_kv, D); caches (H_kv, S, D). ``scale`` multiplies q and
    the keys: the scores then have a spread of scale^2 (12: exp overflows float32)."""
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return Case((r(H, D) * scale, r(H_kv, D) * scale, r(H_kv, D), r(H_kv, S, D) * scale,
                 r(H_kv, S, D)))


def _random_attn_case(rng: random.Random) -> Case:
    H_kv, group = rng.choice([1, 2, 4]), rng.choice([1, 1, 2, 4])
    return _attn_case(H_kv * group, rng.randint(0, 40), rng.choice([2, 4, 8, 16, 64]),
                      rng.randrange(2**31), H_kv=H_kv, scale=rng.choice([1.0, 1.0, 1.0, 12.0]))


_ATTN_CASES = [_attn_case(1, 0, 4, 0), _attn_case(2, 1, 4, 1), _attn_case(4, 7, 16, 2),
               _attn_case(8, 32, 64, 3),
               _attn_case(8, 12, 16, 4, H_kv=2),  # GQA: 4 query heads per KV head
               _attn_case(4, 5, 8, 5, H_kv=1),  # multi-query attention: one KV head
               _attn_case(4, 9, 16, 6, H_kv=2, scale=12.0),  # scores in the hundreds
               _attn_case(2, 5, 8, 7, scale=20.0),
               _attn_case(8, 6, 16, 8, H_kv=4, dtype=torch.float64)]  # dtype kept


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
    _AttentionExercise(
        "decode_attention", LAB, decode_attention,
        fixed_cases=_ATTN_CASES,
        random_case=_random_attn_case,
        # scores of a few hundred carry float32 rounding of ~1e-5 each, and every correct
        # order of operations (SDPA's pre-scaled q, a manual shift) rounds differently
        rtol=1e-3, atol=1e-4, kind="technique",
        hint="The new token is one more position: its key and value join the cached ones "
             "before it attends. Score every position's key against the query, scaled by "
             "the square root of the head size, and turn each head's scores into weights "
             "that sum to one over the positions, in a way that scores in the thousands "
             "neither overflow nor give NaN. Under grouped-query attention there are fewer "
             "KV heads than query heads: with g query heads per KV head, query heads 0 to "
             "g - 1 read KV head 0, the next g read KV head 1, and so on.",
        code_hint="k = torch.cat([k_cache, k_new[:, None]], dim=1)  # (H_kv, S+1, D), v "
                  "likewise; g = q.shape[0] // k.shape[0]; k = k.repeat_interleave(g, dim=0) "
                  "(and v); scores = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(D); "
                  "w = torch.softmax(scores, dim=-1); return (w[:, :, None] * v).sum(dim=1)",
        mistakes=[
            Mistake("cache only", _attn_cache_only,
                    "The new token attends to itself too: append k_new and v_new to the "
                    "cache before attending."),
            Mistake("no scale", _attn_no_scale,
                    "Scaled dot-product attention divides the scores by sqrt(head_dim)."),
            Mistake("scale by D", _attn_scale_by_d,
                    "Divide the scores by the square root of head_dim, not by head_dim."),
            Mistake("softmax over heads", _attn_softmax_heads,
                    "Normalise over positions (the last axis of the scores), not over heads."),
            Mistake("tiled KV heads", _attn_tiled_heads,
                    "Your KV heads are matched to the wrong query heads: repeating the whole "
                    "stack of KV heads (tiling) gives query head h the KV head h mod H_kv. "
                    "Query heads come in contiguous groups: each KV head must be repeated in "
                    "place, g times in a row."),
            Mistake("no max shift", _attn_naive_exp, _OVERFLOW_HINT),
        ],
    ),
    Exercise(
        "kv_cache_bytes", LAB, kv_cache_bytes,
        fixed_cases=[Case((_named("llama-3-8b"), 8192, 1, 2)),
                     Case((_named("llama-2-7b"), 4096, 1, 2)),
                     Case((_named("code-m"), 1024, 4, 4)),
                     Case((_named("qwen2.5-0.5b"), 1, 1, 1))],
        random_case=_random_kv_case,
        hint="Count what one token leaves behind: in every layer, a key vector and a value "
             "vector for each KV head (not each query head: under grouped-query attention "
             "several query heads share one), each head_dim numbers long. Every sequence of "
             "the batch keeps its own.",
        code_hint="return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * seq_len * batch "
                  "* bytes_per_elem",
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
        hint="Row i is the query and column j the key. A query never sees a later key, and "
             "a window of W keys counts the query's own position as one of the W.",
        code_hint="i = torch.arange(T)[:, None]; j = torch.arange(T)[None, :]; "
                  "return (j <= i) & (i - j < window)",
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

PREDICTIONS = [
    Prediction(
        "kv_cache_speedup", LAB,
        "Generating the timed run's tokens one at a time: how many times longer will it take "
        "without the KV cache than with it (total time no cache / total time with cache)? "
        "Passing: within 50% of the measurement (this machine decides it).",
        "x", rel_tol=0.5,
        explain="Without the cache step n runs every layer over all n tokens, so the work "
                "grows like n and the whole run like n^2 / 2; with it each step runs the "
                "layers over one token. On a small model the ratio stays well below n / 2: a "
                "step has fixed costs (Python, kernel launches) that neither loop avoids, and "
                "a forward over n tokens costs much less than n forwards over one, because "
                "the weights are read once for all n."),
    Prediction(
        "kv_batch_mb", LAB,
        "The next cell allocates code-m's cache for a batch of 8 sequences of 512 tokens, at "
        "the model's dtype. How many MB (10^6 bytes) will it hold? Passing: within 5%.",
        "MB", rel_tol=0.05,
        explain="2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes per "
                "element: code-m has 8 layers, 4 KV heads of 32 numbers and fp32 weights. "
                "The KV heads count, not the 8 query heads: grouped-query attention halves "
                "it. The cache is preallocated at its full length, used or not."),
]
