"""A semantic cache: serve a stored answer to a request that means the same as a stored one.

An exact-match prompt cache misses "Which city is the capital of France?" after caching
"What is the capital of France?". A semantic cache (GPTCache, Bang 2023; Zhu et al. 2023,
"Towards Optimizing the Costs of LLM Usage") embeds each request as a unit vector e(x) and
answers from the nearest stored request r* when it is similar enough:

    r* = argmax_r  e(x) . e(r)              (the vector index: brute force or faiss)
    serve answer(r*)  iff  e(x) . e(r*) >= threshold  and  guard(x, r*)

The threshold trades hit rate for wrong hits, and embeddings rate "capital of France" and
"capital of Germany" as close, so no threshold separates them cleanly (semantic_eval.py
measures the curve). The ``guard`` is the pluggable second test: a function of the two
requests, e.g. :class:`~infer_lab.app.slot_guard.SlotGuard`, which rejects pairs whose
numbers, units, names or identifiers differ. The cache looks at the ``candidates`` nearest
requests, best first, so a vetoed neighbour does not hide the next one above threshold.

Guarantee (tested, also with hypothesis): ``lookup`` never returns a hit whose similarity is
below the threshold, and an empty cache returns None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .vector_index import BruteForceIndex, VectorIndex

__all__ = ["Guard", "Hit", "SemanticCache", "TextEncoder", "no_guard"]

Guard = Callable[[str, str], bool]  # (new request, stored request) -> may share an answer


def no_guard(request: str, stored: str) -> bool:
    """The guard that lets every pair through: similarity alone decides."""
    return True


class TextEncoder(Protocol):
    """What the cache needs from an embedder: (N,) texts -> (N, dim) unit float32 rows."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ...


@dataclass(frozen=True)
class Hit:
    """A served answer: which stored request it came from, and how similar that was."""

    answer: str
    request: str  # the stored request whose answer this is
    similarity: float  # e(query) . e(request), >= the cache's threshold
    id: int  # the stored entry's index id


def check_threshold(threshold: float) -> float:
    """Cosine similarity lives in [-1, 1]: a threshold outside it (or NaN) is a bug."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number in [-1, 1], got {threshold!r}")
    if math.isnan(threshold) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {threshold}")
    return float(threshold)


class SemanticCache:
    """Store (request, answer) pairs; look up the answer of a similar enough request."""

    def __init__(self, embedder: TextEncoder, index: VectorIndex | None = None,
                 threshold: float = 0.9, guard: Guard = no_guard, candidates: int = 4) -> None:
        self.threshold = check_threshold(threshold)
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.embedder = embedder
        self.index = index if index is not None else BruteForceIndex(embedder.dim)
        if self.index.dim != embedder.dim:
            raise ValueError(f"index dim {self.index.dim} != embedder dim {embedder.dim}")
        if len(self.index) != 0:  # ids must line up with self._entries from the start
            raise ValueError("the index must be empty: the cache assigns its ids")
        self.guard = guard
        self.candidates = candidates
        self._entries: list[tuple[str, str]] = []  # id -> (request, answer)

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, request: str, answer: str) -> int:
        """Add one entry; returns its id. A repeated request is stored again (newest last)."""
        e = self.embedder.encode([request])  # (1, d)
        self.index.add(e)
        self._entries.append((request, answer))
        return len(self._entries) - 1

    def lookup(self, request: str) -> Hit | None:
        """The answer of the most similar stored request that clears the threshold and the
        guard, or None (also when the cache is empty)."""
        if not self._entries:
            return None
        q = self.embedder.encode([request])  # (1, d)
        scores, ids = self.index.search(q, min(self.candidates, len(self._entries)))  # (1, k)
        for score, i in zip(scores[0].tolist(), ids[0].tolist()):
            # best first: once one is below the threshold, all the rest are too.
            # `not >=` also stops on NaN, so a broken embedding can never hit.
            if i < 0 or not score >= self.threshold:
                break
            stored, answer = self._entries[i]
            if self.guard(request, stored):
                return Hit(answer=answer, request=stored, similarity=score, id=i)
        return None
