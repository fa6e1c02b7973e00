"""Lab 09 (the application layer): prompt caching, the semantic cache's threshold explorer,
and the table of what each lever saves per million tokens.

The cascade and constrained output are in :mod:`.lab09_applications_decode`; rate limits
and autoscaling in :mod:`.lab09_applications_traffic`. The techniques are in
:mod:`infer_lab.app`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from ..app.prompt_cache import Prices, Served, measure, saving, shared_prefix_workload
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure

SYSTEM = ("You are the code-review assistant of a small software team. Answer in one or two "
          "sentences and quote names exactly. The module under review:\n\n")
QUESTIONS = ["What does the first function do?", "Which modules are imported?",
             "Is there any error handling?", "Name one class defined here.",
             "What would you test first?", "Is any global state kept?",
             "What does the module export?", "Summarise the module in one line."]


# -- prompt caching --------------------------------------------------------------------------
def prompt_cache_runs(model, tok, sizes, prices: Prices | None = None,
                      progress: bool = True) -> dict[str, dict]:
    """A shared system prompt (instructions + held-out code) before each of ``requests``
    questions, and a conversation of ``turns`` turns resending its history: each through
    the engine with prefix caching on and off ({workload: measure's rows})."""
    from tqdm.auto import tqdm

    from ..serving.engine import EngineConfig
    from ..zoo.data import iter_files

    prices = prices or Prices()
    code = next(f.text for f in iter_files("valid") if len(f.text) >= sizes.system_chars)
    system = tok.encode(SYSTEM + code[:sizes.system_chars])
    qs = [tok.encode(f"\n# {QUESTIONS[i % len(QUESTIONS)]}\n") for i in range(sizes.requests)]
    cfg = EngineConfig(num_blocks=2048, block_size=16, max_num_batched_tokens=512)
    work = {"shared system prompt": (shared_prefix_workload(system, qs), False),
            "conversation": ([system + qs[0]] + qs[1:sizes.turns], True)}
    return {name: measure(model, prompts, sizes.max_tokens, prices, cfg, turns=turns)
            for name, (prompts, turns) in tqdm(work.items(), desc="workloads, cache on/off",
                                               disable=not progress)}


def prompt_cache_table(runs: dict[str, dict[str, list[Served]]]) -> str:
    """One line per request: tokens, cached tokens, TTFT and cost, caching off and on."""
    lines = [(f"{'request':>24} {'prompt':>6} {'cached':>6} {'TTFT off':>9} {'TTFT on':>8} "
              f"{'cost off':>9} {'cost on':>8}   (TTFT in ms, cost in micro-dollars)")]
    for name, rows in runs.items():
        for i, (on, off) in enumerate(zip(rows["cached"], rows["uncached"])):
            lines.append(f"{name + ' #' + str(i):>24} {on.prompt_tokens:>6} "
                         f"{on.cached_tokens:>6} {off.ttft_s * 1e3:>9.1f} {on.ttft_s * 1e3:>8.1f} "
                         f"{off.cost * 1e6:>9.1f} {on.cost * 1e6:>8.1f}")
        s = saving(rows)
        lines.append(f"{'':>24} -> after the first: {s['cached_fraction']:.0%} of prompt "
                     f"tokens cached, TTFT x{s['ttft_ratio']:.2f}, cost -{s['cost_saving']:.0%}")
    return "\n".join(lines)


def prompt_cache_figure(runs: dict[str, dict[str, list[Served]]]) -> go.Figure:
    """TTFT of each request with and without prefix caching, per workload."""
    fig = go.Figure()
    for k, (name, rows) in enumerate(runs.items()):
        for label, dash in (("uncached", "dot"), ("cached", "solid")):
            fig.add_trace(go.Scatter(
                x=list(range(len(rows[label]))), y=[r.ttft_s * 1e3 for r in rows[label]],
                mode="lines+markers", name=f"{name}, {label}",
                line={"color": COLORS[k], "dash": dash}))
    return layout(fig, "Prefix caching: time to first token, request by request",
                  "request (in order)", "time to first token (ms)")


# -- semantic caching -----------------------------------------------------------------------
def semantic_installed() -> bool:
    from ..app.embeddings import EMBEDDING_PACKAGE

    return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None


def semantic_scores(embedder=None, guard=None) -> dict:
    """The labelled pairs with their cosine similarity and the guard's verdict."""
    from ..app.embeddings import Embedder
    from ..app.semantic_eval import guard_mask, load_pairs, similarities
    from ..app.slot_guard import SlotGuard

    pairs = load_pairs()
    guard = guard or SlotGuard()
    return {"pairs": pairs, "sims": similarities(pairs, embedder or Embedder()),
            "want": np.array([p.label == "hit" for p in pairs]),
            "allowed": guard_mask(pairs, guard), "guard": guard}


def served_at(scores: dict, threshold: float, guarded: bool) -> tuple[list, list]:
    """(paraphrases served, near-misses served) at ``threshold``, each as (pair, cos)."""
    ok = scores["sims"] >= threshold
    if guarded:
        ok &= scores["allowed"]
    hits = [(p, float(s)) for p, s, o, w in zip(scores["pairs"], scores["sims"], ok,
                                                 scores["want"]) if o and w]
    wrong = [(p, float(s)) for p, s, o, w in zip(scores["pairs"], scores["sims"], ok,
                                                  scores["want"]) if o and not w]
    return hits, wrong


def semantic_figure(scores: dict, threshold: float | None = None) -> go.Figure:
    """Hit rate and wrong-hit rate against the threshold, without and with the guard."""
    from ..app.semantic_eval import curve

    fig = go.Figure()
    for k, (name, allowed) in enumerate((("no guard", None), ("slot guard", scores["allowed"]))):
        pts = curve(scores["sims"], scores["want"], allowed,
                    thresholds=np.round(np.linspace(0.5, 1, 101), 3))
        ts = [p.threshold for p in pts]
        fig.add_trace(go.Scatter(x=ts, y=[100 * p.hit_rate for p in pts], name=f"hits, {name}",
                                 line={"color": COLORS[k]}))
        fig.add_trace(go.Scatter(x=ts, y=[100 * p.wrong_hit_rate for p in pts],
                                 name=f"wrong hits, {name}", line={"color": COLORS[k],
                                                                   "dash": "dot"}))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"t = {threshold:.3f}")
    return layout(fig, "Semantic cache: what a threshold serves (180 labelled pairs)",
                  "cosine-similarity threshold (unitless)",
                  "share of paraphrases / near-misses served (%)")


class SemanticExplorer(Explorer):
    """A threshold slider: the paraphrases served (hits) and the near-misses served (wrong
    hits), listed, with and without the slot guard."""

    def __init__(self, scores: dict, threshold: float = 0.9, show: int = 8):
        self.scores, self.show = scores, show
        self.threshold = W.FloatSlider(value=threshold, min=0.5, max=1.0, step=0.005,
                                       readout_format=".3f", description="threshold",
                                       continuous_update=False, layout={"width": "520px"})
        self.guarded = W.Checkbox(value=False, description="slot guard")
        self.controls = W.HBox([self.threshold, self.guarded])
        self.readout = W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.threshold, self.guarded)
        self.update()

    def text(self) -> str:
        hits, wrong = served_at(self.scores, self.threshold.value, self.guarded.value)
        n_hit = int(self.scores["want"].sum())
        n_miss = len(self.scores["want"]) - n_hit
        out = [(f"{len(hits)}/{n_hit} paraphrases served (hits), {len(wrong)}/{n_miss} "
                f"near-misses served (WRONG hits)")]
        for p, s in sorted(wrong, key=lambda x: -x[1])[:self.show]:
            out.append(f"  WRONG {s:.3f} [{p.kind}] {p.a!r} -> {p.b!r}")
        for p, s in sorted(hits, key=lambda x: x[1])[:max(2, self.show // 2)]:
            out.append(f"  hit   {s:.3f} {p.a!r} -> {p.b!r}")
        return "\n".join(out)

    def update(self) -> None:
        swap_figure(self.figure, semantic_figure(self.scores, self.threshold.value))
        from html import escape

        self.readout.value = f"<pre>{escape(self.text())}</pre>"


# -- the levers, side by side -------------------------------------------------------------
def blended_price(prices: Prices, prompt_tokens: float, completion_tokens: float) -> float:
    """Dollars per million tokens of a workload with this mix, nothing cached."""
    total = prompt_tokens + completion_tokens
    return (prompt_tokens * prices.input + completion_tokens * prices.output) / total


def levers_table(savings: dict[str, tuple[float, str]], per_mtok: float) -> str:
    """{lever: (share of cost saved, what it rests on)} as dollars per million tokens."""
    lines = [f"baseline: ${per_mtok:.2f} per 1M tokens (this lab's prices and token mix)",
             f"{'lever':>28} {'saved':>6} {'$/1M saved':>10}   measured on"]
    for name, (share, basis) in savings.items():
        lines.append(f"{name:>28} {share:>6.1%} {share * per_mtok:>10.3f}   {basis}")
    return "\n".join(lines)


def levers_figure(savings: dict[str, tuple[float, str]], per_mtok: float) -> go.Figure:
    names: Sequence[str] = list(savings)
    fig = go.Figure(go.Bar(x=names, y=[savings[n][0] * per_mtok for n in names],
                           text=[f"{savings[n][0]:.0%}" for n in names], textposition="outside",
                           marker_color=COLORS[:len(names)]))
    return layout(fig, "What each lever saved here, per million tokens", "",
                  "dollars saved per 1M tokens ($)", showlegend=False)
