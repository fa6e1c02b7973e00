"""Lab 05: the acceptance rule keeps the target's distribution, and wrong rules do not.

Speculative sampling (Leviathan et al. 2023; Chen et al. 2023) keeps a drafted token d
with probability min(1, p(d)/q(d)) and, on a rejection, draws from the residual
norm(max(0, p - q)); then every token has exactly probability p:

    P(t) = q(t) min(1, p(t)/q(t)) + (1 - sum_x min(p(x), q(x))) r(t) = p(t)

Here the first generated token is drawn many times with plain target sampling and with
speculative sampling under the right rule and under wrong ones, and a chi-square test
(:func:`chi_square`) says whether the counts can come from p (:func:`compare_samplers`,
:class:`DistributionExplorer`); :mod:`.lab05_speculative_pairs` tests the first *two*
tokens, which a one-token test cannot (the bonus token, the second draft). A rule is
anything with :func:`infer_lab.speculative.verify`'s signature; :func:`as_rule` makes one
from a learner's ``verify_draft`` and ``accept_or_resample`` (lab 05's exercises). The
technique itself is :mod:`infer_lab.speculative`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as W
import plotly.graph_objects as go
import torch

from ..generate import Sampling, logits_to_probs
from ..model import Transformer
from ..speculative import verify
from .figures import COLORS
from .widgets import Explorer, swap_figure


# -- acceptance rules: the right one (infer_lab.speculative.verify) and wrong ones ----------
def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r = (p - q).clamp(min=0)  # (V,)
    return r / r.sum() if r.sum() > 0 else p


def _wrong_rule(accept: Callable[[float, float, torch.Generator | None], bool],
                resample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """A verify() look-alike (same signature) built from a deliberately wrong piece."""
    def rule(p, q, draft, greedy, gen):
        for i, d in enumerate(draft):
            q_i = q[i] if q is not None else torch.nn.functional.one_hot(
                torch.tensor(d), p.shape[-1]).to(p)  # (V,)
            if not accept(float(p[i, d]), float(q_i[d]), gen):
                return i, int(torch.multinomial(resample(p[i], q_i), 1, generator=gen))
        return len(draft), int(torch.multinomial(p[len(draft)], 1, generator=gen))
    return rule


def _ratio_test(p_d: float, q_d: float, gen: torch.Generator | None) -> bool:
    return torch.rand((), generator=gen).item() < min(1.0, p_d / q_d)


def _bonus_off_by_one(p, q, draft, greedy, gen):
    """verify() with its bonus token drawn from the last draft's row, not the row after."""
    n, nxt = verify(p, q, draft, False, gen)
    if n == len(draft) and draft:
        nxt = int(torch.multinomial(p[len(draft) - 1], 1, generator=gen))
    return n, nxt


RULES: dict[str, Callable] = {
    "min(1, p/q), then the residual (correct)": verify,
    "keep only if p >= q": _wrong_rule(lambda p_d, q_d, g: p_d >= q_d, _residual),
    "on rejection, draw from p": _wrong_rule(_ratio_test, lambda p, q: p),
    "always keep the draft": _wrong_rule(lambda *_: True, _residual),
    "bonus from the last draft's row (off by one)": _bonus_off_by_one,
}
CORRECT = next(iter(RULES))
# Wrong rules whose first token is right: only the two-token test (.lab05_speculative_pairs)
# can catch them.
FIRST_TOKEN_BLIND = ("bonus from the last draft's row (off by one)",)
YOURS = "your verify_draft + accept (or the reference)"  # the learner's rule, in a lab

Probs = Callable[[torch.Tensor, float], torch.Tensor]  # (logits (..., V), T) -> (..., V)


def _probs_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits_to_probs(logits, Sampling(temperature=temperature))


def as_rule(verify_draft: Callable, accept: Callable) -> Callable:
    """A rule with :func:`~infer_lab.speculative.verify`'s signature from lab 05's
    ``verify_draft(p, q, draft, gen, accept) -> (tokens, n accepted)``, judging each draft
    with ``accept`` (``accept_or_resample``), so that :func:`sample_first_tokens` and
    :func:`~infer_lab.speculative.speculative_decode` run the learner's code."""
    def rule(p, q, draft, greedy, gen):
        if q is None:  # a deterministic proposal (prompt lookup): q is one-hot on each draft
            q = torch.nn.functional.one_hot(torch.tensor(list(draft), dtype=torch.long),
                                            p.shape[-1]).to(p)  # (k, V)
        tokens, n = verify_draft(p, q, list(draft), gen, accept)
        tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else [int(t) for t in tokens]
        n = int(n)
        if tokens[:n] != list(draft[:n]) or len(tokens) != n + 1:
            raise ValueError(f"verify_draft returned tokens {tokens} with {n} accepted for the "
                             f"draft {list(draft)}: expected the {n} accepted drafts and one "
                             "token after them")
        return n, tokens[n]
    return rule


def pick_rule(rule: str | Callable) -> Callable:
    """A rule by its name in :data:`RULES`, or the rule itself."""
    return RULES[rule] if isinstance(rule, str) else rule


# -- the distribution check -----------------------------------------------------------------
@torch.inference_mode()
def next_token_probs(model: Transformer, prompt: list[int], temperature: float,
                     probs: Probs = _probs_at) -> torch.Tensor:
    """(V,) the model's distribution of the token after ``prompt`` at ``temperature``,
    computed by ``probs`` (the library's softmax at T, or a learner's)."""
    logits = model(torch.tensor([prompt], device=model.device))[0, -1]  # (V,)
    return probs(logits.float(), temperature).cpu()


def sample_first_tokens(p: torch.Tensor, q: torch.Tensor, n: int, rule: Callable = verify,
                        seed: int = 0) -> torch.Tensor:
    """Counts (V,) of the first token speculative sampling emits, over ``n`` draws.

    Each draw: the draft proposes d ~ q (k = 1) and ``rule`` (verify's signature) keeps it
    or replaces it. The target's row after d (the bonus position) never matters for the
    first token, so p is repeated there instead of running the target on every d.
    """
    gen = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q, n, replacement=True, generator=gen)  # (n,)
    p2, q1 = torch.stack([p, p]), q[None]  # (2, V), (1, V)
    counts = torch.zeros(p.shape[-1], dtype=torch.long)
    for d in drafts.tolist():
        kept, nxt = rule(p2, q1, [d], False, gen)
        counts[d if kept else nxt] += 1
    return counts


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0
               ) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of counts (V,) against probabilities (V,).

    Tokens expected fewer than ``min_expected`` times are pooled into one bin, as the
    chi-square approximation needs. p-value = Q(df/2, stat/2), the regularised upper
    incomplete gamma function.
    """
    counts, expected = counts.double(), probs.double() * counts.sum()
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if bool(((exp == 0) & (obs > 0)).any()):
        return math.inf, int(big.sum()), 0.0  # a token the target never emits
    keep = exp > 0
    stat = float(((obs - exp) ** 2 / exp)[keep].sum())
    df = int(keep.sum()) - 1
    pval = float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(stat / 2)))
    return stat, df, pval


@dataclass
class SampleComparison:
    """Plain target sampling vs speculative sampling of one next token."""

    p: torch.Tensor  # (V,) the target's exact distribution
    q: torch.Tensor  # (V,) the draft's
    target_counts: torch.Tensor  # (V,) tokens drawn from p directly
    spec_counts: torch.Tensor  # (V,) tokens emitted by draft + acceptance rule
    rule: str
    temperature: float

    @property
    def pvalues(self) -> tuple[float, float]:
        """Chi-square p-values of (target samples, speculative samples) against p."""
        return chi_square(self.target_counts, self.p)[2], chi_square(self.spec_counts, self.p)[2]


def compare_samplers(target: Transformer, draft: Transformer, prompt: list[int], n: int,
                     temperature: float = 1.0, rule: str | Callable = CORRECT, seed: int = 0,
                     probs: Probs = _probs_at, label: str | None = None) -> SampleComparison:
    """Draw the token after ``prompt`` n times from the target, and n times speculatively
    with ``rule`` (a name in :data:`RULES`, or a rule; ``label`` names it in figures)."""
    p = next_token_probs(target, prompt, temperature, probs)  # (V,)
    q = next_token_probs(draft, prompt, temperature, probs)  # (V,)
    gen = torch.Generator().manual_seed(seed + 1)
    plain = torch.multinomial(p, n, replacement=True, generator=gen)  # (n,)
    name = label or (rule if isinstance(rule, str) else getattr(rule, "__name__", "rule"))
    return SampleComparison(p, q, torch.bincount(plain, minlength=p.shape[-1]),
                            sample_first_tokens(p, q, n, pick_rule(rule), seed), name,
                            temperature)


def distribution_figure(cmp: SampleComparison, label: Callable[[int], str] = str,
                        top: int = 12) -> go.Figure:
    """Side-by-side histograms over the target's ``top`` tokens (+ the rest), exact p dots."""
    ids = cmp.p.argsort(descending=True)[:top].tolist()
    names = [f"{label(t)!r} ({t})" for t in ids] + ["all others"]  # ids: labels may repeat
    n = int(cmp.target_counts.sum())

    def shares(v: torch.Tensor) -> list[float]:
        v = v.double() / v.sum()
        return [float(v[t]) for t in ids] + [float(1 - v[ids].sum())]

    pt, ps = cmp.pvalues
    fig = go.Figure([
        go.Bar(x=names, y=shares(cmp.target_counts), name=f"target sampling (p-value {pt:.3g})",
               marker_color=COLORS[0]),
        go.Bar(x=names, y=shares(cmp.spec_counts), marker_color=COLORS[1],
               name=f"speculative: {cmp.rule} (p-value {ps:.3g})"),
        go.Scatter(x=names, y=shares(cmp.p), mode="markers", name="exact target p",
                   marker={"color": "black", "symbol": "diamond", "size": 9})])
    fig.update_layout(title=f"First token, {n} draws each, temperature {cmp.temperature:g}",
                      xaxis_title="token", yaxis_title="share of draws (fraction)",
                      barmode="group", template="plotly_white", height=430,
                      legend={"orientation": "h", "y": -0.3})
    return fig


class DistributionExplorer(Explorer):
    """Pick an acceptance rule and a temperature: target vs speculative histograms."""

    def __init__(self, target: Transformer, draft: Transformer, tok, prompt: list[int],
                 n: int, temperature: float = 1.0, rules: dict[str, Callable] | None = None,
                 probs: Probs = _probs_at):
        """``rules``: more rules to offer, first (the learner's); ``probs``: the softmax."""
        self.target, self.draft, self.tok, self.prompt = target, draft, tok, prompt
        self.rules, self.probs = {**(rules or {}), **RULES}, probs
        self.rule = W.Dropdown(options=list(self.rules), value=next(iter(self.rules)),
                               description="rule",
                               layout=W.Layout(width="420px"))
        self.temperature = W.FloatSlider(value=temperature, min=0.25, max=2.0, step=0.25,
                                         description="temperature", continuous_update=False)
        self.n = W.IntSlider(value=n, min=200, max=max(4 * n, 2000), step=100,
                             description="draws", continuous_update=False)
        self.button = W.Button(description="draw again", icon="refresh")
        self.controls = W.HBox([self.rule, self.temperature, self.n, self.button])
        self.readout, self.figure, self.seed = W.HTML(), go.FigureWidget(), 0
        self.button.on_click(lambda _b: self.redraw())
        self.wire(self.rule, self.temperature, self.n)
        self.update()

    def redraw(self) -> None:
        self.seed += 1
        self.update()

    def update(self) -> None:
        self.result = compare_samplers(self.target, self.draft, self.prompt, self.n.value,
                                       self.temperature.value, self.rules[self.rule.value],
                                       self.seed, self.probs, label=self.rule.value)
        swap_figure(self.figure, distribution_figure(self.result, lambda t: self.tok.decode([t])))
        pt, ps = self.result.pvalues
        verdict = "consistent with" if ps > 0.001 else "<b>not</b>"
        self.readout.value = (f"chi-square p-value, target samples: {pt:.3g}; speculative "
                              f"samples: <b>{ps:.3g}</b> ({verdict} the target's distribution "
                              "at the 0.001 level)")
