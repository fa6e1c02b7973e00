"""Lab 09: the levers that change what the models write. A cascade (code-s answers,
code-m when code-s is unsure) on its quality-cost curve with a threshold slider, and
constrained output: a schema editor whose constrained answer sits beside the free one,
decoded with the learner's token masks once their ``token_mask`` passes."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from html import escape

import ipywidgets as W
import plotly.graph_objects as go
import torch

from ..app.cascade import Answers, Point, answer, best_saving, cascade_curve
from ..app.constrained import constrained_generate, schema_constraint
from ..app.token_mask import TokenMasks, Vocabulary
from .figures import COLORS, layout
from .widgets import Explorer, swap_figure


# -- cascade ----------------------------------------------------------------------------------
def cascade_answers(small, large, tok, n_samples: int, seed: int = 0,
                    progress: bool = True) -> dict:
    """Both models' greedy next lines on ``n_samples`` held-out lines, and the small one's
    cost per answer relative to the large one's (measured: seconds per answer)."""
    from tqdm.auto import tqdm

    from ..quality import next_line_samples
    from ..zoo.data import iter_files

    samples = next_line_samples(iter_files("valid"), n_samples, seed)
    out, secs = {}, {}
    for name, model in tqdm((("small", small), ("large", large)), desc="models answering",
                            disable=not progress):
        t0 = time.perf_counter()
        out[name] = answer(model, tok, samples)
        secs[name] = time.perf_counter() - t0
    return {"samples": samples, "small": out["small"], "large": out["large"],
            "cost_small": secs["small"] / secs["large"], "seconds": secs}


def cascade_points(runs: dict, expected_cost: Callable[[float, float, float], float],
                   thresholds: list[float] | None = None) -> list[Point]:
    """The curve over ``thresholds`` (default every distinct confidence cut), each point's
    cost recomputed with ``expected_cost(cost_small, 1, escalated)`` (the learner's
    function once it passed)."""
    pts = cascade_curve(runs["small"], runs["large"], runs["cost_small"], thresholds)
    return [Point(p.threshold, p.quality, float(expected_cost(runs["cost_small"], 1.0,
                                                                p.escalated)), p.escalated)
            for p in pts]


def cascade_figure(points: list[Point], small: Answers, large: Answers,
                   here: Point | None = None) -> go.Figure:
    ns = len(small.correct)
    fig = go.Figure(go.Scatter(x=[p.cost for p in points], y=[100 * p.quality for p in points],
                               mode="lines+markers", name="cascade (threshold swept)",
                               line={"color": COLORS[0]}, marker={"size": 4}))
    for name, ans, x, c in (("always code-s", small, points[0].cost, COLORS[1]),
                            ("always code-m", large, 1.0, COLORS[2])):
        fig.add_trace(go.Scatter(x=[x], y=[100 * sum(ans.correct) / ns], mode="markers+text",
                                 text=[name], textposition="top center", name=name,
                                 marker={"size": 12, "color": c}))
    if here is not None:
        fig.add_trace(go.Scatter(x=[here.cost], y=[100 * here.quality], mode="markers",
                                 name="this threshold", marker={"size": 16, "symbol": "x",
                                                                "color": COLORS[3]}))
    return layout(fig, "Cascade code-s -> code-m: quality against cost",
                  "cost per request (x one code-m answer)",
                  f"next-line exact match over {ns} held-out lines (%)")


class CascadeExplorer(Explorer):
    """A threshold on code-s's confidence (mean log-probability of its line): below it the
    request escalates to code-m."""

    def __init__(self, runs: dict, expected_cost: Callable[[float, float, float], float]):
        self.runs, self.cost = runs, expected_cost
        self.points = cascade_points(runs, expected_cost)
        conf = runs["small"].confidence
        lo = math.floor(min(conf) * 10) / 10
        self.threshold = W.FloatSlider(value=round(sorted(conf)[len(conf) // 2], 2), min=lo,
                                       max=0.0, step=0.01, description="escalate below",
                                       continuous_update=False, layout={"width": "520px"},
                                       style={"description_width": "110px"})
        self.controls, self.readout = self.threshold, W.HTML()
        self.figure = go.FigureWidget()
        self.wire(self.threshold)
        self.update()

    def update(self) -> None:
        p = cascade_points(self.runs, self.cost, [self.threshold.value])[0]
        swap_figure(self.figure, cascade_figure(self.points, self.runs["small"],
                                                self.runs["large"], p))
        large_q = sum(self.runs["large"].correct) / len(self.runs["large"].correct)
        self.readout.value = (f"confidence &lt; {self.threshold.value:.2f}: "
                              f"<b>{p.escalated:.0%}</b> escalated, exact match "
                              f"<b>{p.quality:.1%}</b> (code-m alone {large_q:.1%}), cost "
                              f"<b>{p.cost:.2f}</b> x code-m's")


def cascade_summary(points: list[Point], runs: dict, max_drop: float = 0.01) -> tuple[float, str]:
    large_q = sum(runs["large"].correct) / len(runs["large"].correct)
    save, p = best_saving(points, large_q, max_drop)
    if p is None:
        return 0.0, "no threshold keeps code-m's quality"
    return save, (f"cheapest setting within {max_drop:.0%} of code-m's exact match "
                  f"({large_q:.1%}): {p.escalated:.0%} escalated, cost {p.cost:.2f} x, "
                  f"exact match {p.quality:.1%}")


# -- constrained output, with the learner's masks ---------------------------------------------
class LearnerMasks:
    """A :class:`~infer_lab.app.constrained.Constraint` whose allowed tokens come from
    ``token_mask(dfa, texts, state)``; the budget rule and EOS are the package's
    (the fewest tokens to acceptance, from ``reference``)."""

    def __init__(self, reference: TokenMasks, token_mask: Callable):
        self.ref, self.fn = reference, token_mask
        self.start, self.eos_id = reference.start, reference.eos_id
        self.texts = list(reference.vocab.texts)
        self._allowed: dict[int, list[tuple[int, int]]] = {}  # state -> [(token, next state)]

    def mask(self, state: int, budget: int | None = None) -> torch.Tensor:
        if state not in self._allowed:
            ok = self.fn(self.ref.dfa, self.texts, state)
            nxt = [(t, self.ref.dfa.walk(self.texts[t], state)) for t, a in enumerate(ok)
                   if a and self.texts[t] is not None]
            self._allowed[state] = [(t, q) for t, q in nxt if q is not None]
        limit = math.inf if budget is None else budget - 1
        m = torch.zeros(self.ref.vocab.size, dtype=torch.bool)
        ids = [t for t, q in self._allowed[state] if self.ref.min_tokens(q) <= limit]
        if ids:
            m[torch.tensor(ids)] = True
        if self.eos_id is not None and self.ref.dfa.accepting[state] and limit >= 0:
            m[self.eos_id] = True
        return m

    def advance(self, state: int, token_id: int) -> int:
        return self.ref.advance(state, token_id)

    def is_accepting(self, state: int) -> bool:
        return self.ref.is_accepting(state)

    def min_tokens(self, state: int) -> float:
        return self.ref.min_tokens(state)


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16},
    "language": {"enum": ["python", "rust", "go"]},
    "stars": {"type": "integer"}}, "required": ["name", "language", "stars"]}


def prompt_for(tok, chat: bool) -> list[int]:
    if chat:
        from ..chat import chat_prompt

        return tok.encode(chat_prompt(tok, [{"role": "user", "content":
                          "Describe one open-source project as JSON: name, language, stars."}]))
    return tok.encode('# one project, as JSON\nproject = ')


def free_and_constrained(model, tok, prompt: list[int], schema: dict, max_tokens: int,
                         token_mask: Callable | None = None, vocab: Vocabulary | None = None
                         ) -> dict:
    """The greedy answer without a constraint and under ``schema`` (with the learner's masks
    when ``token_mask`` is given), each checked against the schema."""
    import jsonschema

    from ..generate import generate

    free = tok.decode(generate(model, [prompt], max_tokens, eos_id=tok.eos_id)[0])
    ref = schema_constraint(schema, tok, model.config.vocab_size, vocab=vocab)
    c = LearnerMasks(ref, token_mask) if token_mask is not None else ref
    out = constrained_generate(model, tok, prompt, c, max_tokens)

    def valid(text: str) -> str:
        try:
            jsonschema.validate(json.loads(text), schema)
            return "valid"
        except (ValueError, jsonschema.ValidationError) as e:
            return f"invalid: {type(e).__name__}"
    return {"free": free, "constrained": out.text, "free_valid": valid(free.strip()),
            "constrained_valid": valid(out.text), "times": out.times}


class SchemaExplorer(Explorer):
    """Edit a JSON schema; the answer under it appears beside the unconstrained one."""

    def __init__(self, model, tok, prompt: list[int], max_tokens: int,
                 token_mask: Callable | None = None, schema: dict | None = None):
        self.model, self.tok, self.prompt, self.max_tokens = model, tok, prompt, max_tokens
        self.token_mask = token_mask
        self.vocab = Vocabulary.from_tokenizer(tok, model.config.vocab_size)
        self.schema = W.Textarea(value=json.dumps(schema or SCHEMA, indent=1), rows=10,
                                 continuous_update=False, description="JSON schema",
                                 layout={"width": "640px"})
        self.controls, self.readout = self.schema, W.HTML()
        self.figure = go.FigureWidget()  # unused: the answers are text
        self.wire(self.schema)
        self.update()

    @property
    def widget(self) -> W.Widget:
        return W.VBox([self.controls, self.readout])

    def update(self) -> None:
        try:
            r = free_and_constrained(self.model, self.tok, self.prompt, json.loads(
                self.schema.value), self.max_tokens, self.token_mask, self.vocab)
        except (ValueError, TypeError, KeyError) as e:  # a schema we cannot compile
            self.readout.value = f"<pre>schema refused: {escape(str(e))}</pre>"
            return
        box = ("<div style='flex:1'><b>{}</b> ({})<pre style='white-space:pre-wrap'>{}</pre>"
               "</div>")
        self.readout.value = ("<div style='display:flex;gap:16px'>"
                              + box.format("unconstrained", r["free_valid"], escape(r["free"]))
                              + box.format("constrained", r["constrained_valid"],
                                           escape(r["constrained"])) + "</div>"
                              + f"<small>{escape(r['times'].summary())}</small>")
