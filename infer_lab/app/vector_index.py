"""Nearest-neighbour search over unit vectors: a brute-force matrix product, and faiss.

For unit vectors the nearest neighbour by cosine is the largest inner product:

    top-k(q) = argmax_k  X q        X: (N, d) stored rows, q: (d,) query, both ||.|| = 1

Both indexes here compute that exactly, by reading all N rows (O(N d) per query); they
differ in constant factors only. :class:`BruteForceIndex` is one numpy matrix product and
an ``argpartition``; :class:`FaissIndex` is faiss' ``IndexFlatIP`` (Johnson, Douze &
Jegou 2017, "Billion-scale similarity search with GPUs"), whose SIMD loop keeps a k-heap
as it scans instead of materialising all N scores. :func:`measure_latency` times one query
at a time over sizes 1e2..1e5. Measured on 2 shared CPU cores at one thread, the two stay
within ~15-30% of each other at every size, with no stable crossover: an exact scan is
memory-bound whoever writes it. With more threads than free cores, both jump to ~8 ms
(waiting for a core) once their BLAS/OpenMP goes parallel. The crossover that exists is
against an *approximate* index: ``FaissIndex(dim, hnsw_m=16)`` (HNSW) was faster from
3e3 rows and 30x faster at 1e5, at a top-1 recall that depends on the data (on random
384-d vectors, the worst case, it fell to 0.08 at 1e5).

The contract both keep (:class:`VectorIndex`): rows get ids 0, 1, 2, ... in the order
they were added; ``search`` returns (Q, k) scores sorted best first and their ids, and
pads with score -inf, id -1 where fewer than k rows are stored (so an empty index is not
an error, it just has no neighbours).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = ["BruteForceIndex", "FaissIndex", "LatencyRow", "VectorIndex", "crossover",
           "format_rows", "measure_latency", "random_unit_vectors"]

FAISS_HINT = "pip install faiss-cpu"


class VectorIndex(Protocol):
    """What the semantic cache needs from an index: add rows, find the best k."""

    dim: int

    def __len__(self) -> int:
        """How many rows are stored."""
        ...

    def add(self, vectors: np.ndarray) -> None:
        """Append (N, dim) float32 rows; they get the next N ids."""
        ...

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(Q, dim) queries -> ((Q, k) float32 scores best first, (Q, k) int64 ids)."""
        ...


def _as_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]  # (1, d): one vector
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected (N, {dim}) vectors, got shape {np.shape(vectors)}")
    return x


def _empty_result(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((q, k), -np.inf, dtype=np.float32), np.full((q, k), -1, dtype=np.int64)


class BruteForceIndex:
    """Exact inner-product search with one matrix product per query batch."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._x = np.zeros((0, dim), dtype=np.float32)  # (capacity, d)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, vectors: np.ndarray) -> None:
        x = _as_rows(vectors, self.dim)  # (N, d)
        need = self._n + len(x)
        if need > len(self._x):  # grow by doubling: n adds cost O(n) copies in total
            grown = np.zeros((max(need, 2 * len(self._x), 16), self.dim), dtype=np.float32)
            grown[:self._n] = self._x[:self._n]
            self._x = grown
        self._x[self._n:need] = x
        self._n = need

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_rows(queries, self.dim)  # (Q, d)
        scores, ids = _empty_result(len(q), k)
        kk = min(k, self._n)
        if kk == 0:
            return scores, ids
        s = q @ self._x[:self._n].T  # (Q, N) inner products = cosines for unit rows
        if kk == 1:
            top = s.argmax(axis=1)[:, None]  # (Q, 1)
        else:
            # argpartition finds the k best in O(N); only those k are then sorted
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]  # (Q, kk) unordered
            order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)  # (Q, kk) best first
        scores[:, :kk] = np.take_along_axis(s, top, axis=1)
        ids[:, :kk] = top
        return scores, ids


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ModuleNotFoundError(f"FaissIndex needs faiss: {FAISS_HINT}") from e
    return faiss


class FaissIndex:
    """Inner-product search with faiss (optional dependency): exact ``IndexFlatIP`` by
    default; with ``hnsw_m`` an approximate HNSW graph (Malkov & Yashunin 2018) of M links
    per node, searched with a beam of ``ef_search`` (recall < 1, so not the default)."""

    def __init__(self, dim: int, hnsw_m: int | None = None, ef_search: int = 64) -> None:
        faiss = _faiss()
        self.dim = dim
        if hnsw_m is None:
            self._index = faiss.IndexFlatIP(dim)
        else:
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efSearch = ef_search

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        self._index.add(_as_rows(vectors, self.dim))

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_rows(queries, self.dim)  # (Q, d)
        if len(self) == 0:
            return _empty_result(len(q), k)
        scores, ids = self._index.search(q, k)  # (Q, k) each; faiss pads with id -1
        scores = scores.astype(np.float32)
        scores[ids < 0] = -np.inf  # faiss pads with -FLT_MAX; the contract says -inf
        return scores, ids.astype(np.int64)


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 rows drawn uniformly on the unit sphere (normalised Gaussians)."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)  # (n, d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass(frozen=True)
class LatencyRow:
    """Median time of one single-query top-k search at one index size, in milliseconds."""

    size: int
    brute_ms: float
    faiss_ms: float | None  # None where faiss is not installed
    hnsw_ms: float | None = None  # only when measured with hnsw_m
    hnsw_recall: float | None = None  # fraction of queries whose top-1 is the exact one


def _median_query_ms(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    times = []
    for q in queries:  # one query at a time: a cache looks up one request per call
        t0 = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def measure_latency(sizes: Sequence[int] = (100, 1_000, 10_000, 100_000), dim: int = 384,
                    n_queries: int = 50, k: int = 1, threads: int | None = None,
                    hnsw_m: int | None = None, seed: int = 0) -> list[LatencyRow]:
    """Query latency of both indexes over random unit vectors, one row per index size.

    ``threads`` sets faiss' OpenMP threads for the measurement and restores them after;
    numpy's product uses its BLAS's threads as configured (OPENBLAS_NUM_THREADS=1 in the
    environment for one-thread numbers). ``hnsw_m`` also times an approximate HNSW index
    (its build is slow: ~25 s for 1e5 rows on 2 cores) and its top-1 recall. Random vectors
    in 384 dimensions are close to equidistant, the worst case for a graph index, so that
    recall is a lower bound. No assertion on speed: the rows are what this machine measured
    (the first query warms caches and is not counted).
    """
    try:
        faiss = _faiss()
    except ModuleNotFoundError:
        faiss = None
    before = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None and threads is not None:
        faiss.omp_set_num_threads(threads)
    rows = []
    try:
        for n in sizes:
            data = random_unit_vectors(n, dim, seed)  # (n, d)
            queries = random_unit_vectors(n_queries + 1, dim, seed + 1)  # (Q + 1, d)
            brute = BruteForceIndex(dim)
            brute.add(data)
            brute.search(queries[:1], k)  # warm-up
            brute_ms = _median_query_ms(brute, queries[1:], k)
            faiss_ms = None
            if faiss is not None:
                flat = FaissIndex(dim)
                flat.add(data)
                flat.search(queries[:1], k)
                faiss_ms = _median_query_ms(flat, queries[1:], k)
            hnsw_ms = recall = None
            if faiss is not None and hnsw_m is not None:
                graph = FaissIndex(dim, hnsw_m)
                graph.add(data)
                graph.search(queries[:1], k)
                hnsw_ms = _median_query_ms(graph, queries[1:], k)
                exact = brute.search(queries[1:], 1)[1][:, 0]  # (Q,)
                recall = float(np.mean(graph.search(queries[1:], 1)[1][:, 0] == exact))
            rows.append(LatencyRow(n, brute_ms, faiss_ms, hnsw_ms, recall))
    finally:
        if before is not None:
            faiss.omp_set_num_threads(before)
    return rows


def crossover(rows: Sequence[LatencyRow], which: Literal["flat", "hnsw"] = "flat") -> int | None:
    """The smallest measured size from which faiss (``flat`` or ``hnsw``) beats brute force
    at every larger size too; None when it never does (or was not measured)."""
    best = None
    for row in sorted(rows, key=lambda r: r.size, reverse=True):
        ms = row.faiss_ms if which == "flat" else row.hnsw_ms
        if ms is None or ms >= row.brute_ms:
            break
        best = row.size
    return best


def format_rows(rows: Sequence[LatencyRow]) -> str:
    """The latency table as text (ms per single query, median)."""
    def ms(x: float | None) -> str:
        return f"{x:10.4f}" if x is not None else f"{'-':>10}"
    lines = [f"{'size':>8} {'brute ms':>10} {'faiss ms':>10} {'hnsw ms':>10} {'recall':>7}"]
    for r in rows:
        rec = f"{r.hnsw_recall:7.2f}" if r.hnsw_recall is not None else f"{'-':>7}"
        lines.append(f"{r.size:>8} {ms(r.brute_ms)} {ms(r.faiss_ms)} {ms(r.hnsw_ms)} {rec}")
    lines.append(f"faiss flat faster from: {crossover(rows)}; hnsw faster from: "
                 f"{crossover(rows, 'hnsw')}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m infer_lab.app.vector_index [--hnsw M]
    import argparse

    ap = argparse.ArgumentParser(description=measure_latency.__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hnsw", type=int, default=None, help="also time HNSW with M links")
    a = ap.parse_args()
    print(format_rows(measure_latency(a.sizes, k=a.k, threads=a.threads, hnsw_m=a.hnsw)))
