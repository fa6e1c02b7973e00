"""Lab 05, sections 7-9: drafts trained for the target, token trees, sampling with trees.

* :func:`learned_points` measures alpha, c and the speedup of each draft (code-s, the
  distilled code-s, EAGLE, Medusa) as a chain on the same prompts; :func:`alpha_c_figure`
  puts them on one chart of alpha against c, over the formula's iso-speedup curves.
* :class:`TreeStepper` replays a tree speculative decode round by round: the tree the
  draft proposed (the accepted path in green), the mask the target verified it with,
  and the tokens each round kept.
* :func:`sibling_rule` turns a learner's ``accept_among_siblings`` into the rule
  :func:`~infer_lab.speculative.tree_decode.tree_speculative_decode` runs;
  :func:`tree_distribution_test` runs a rule on a toy pair with an 8-token vocabulary,
  where the exact distribution of two sampled tokens is computable, and gives the
  chi-square p-value (SpecInfer's claim, checked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ipywidgets as W
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..config import ModelConfig
from ..generate import Sampling, generate
from ..model import Transformer
from ..speculative import theoretical_speedup
from ..speculative.tree import TokenTree, ancestor_mask
from ..speculative.tree_decode import Round, tree_speculative_decode
from .figures import layout
from .lab05_speculative_distribution import chi_square


# -- section 7: alpha against c --------------------------------------------------------------
@dataclass
class DraftPoint:
    name: str
    k: int
    alpha: float
    c: float
    tokens_per_call: float
    speedup: float
    theory: float


def learned_points(target: Transformer, drafters: dict[str, Callable[[tuple], object]],
                   prompts: list[list[int]], n_new: int, k: int = 3) -> list[DraftPoint]:
    """Each drafter as a greedy chain of depth ``k`` (``drafters``: name -> (branching ->
    fresh TreeDrafter)), timed against plain decoding on the same prompts."""
    from tqdm.auto import tqdm

    from ..speculative import SpecStats

    t0 = time.perf_counter()
    for p in prompts:
        generate(target, [p], n_new)
    plain = time.perf_counter() - t0
    step = plain / (n_new * len(prompts))
    out = []
    for name, make in tqdm(drafters.items(), desc="drafts"):
        total, t0 = SpecStats(), time.perf_counter()
        for p in prompts:
            total.add(tree_speculative_decode(target, make((1,) * k), p, n_new)[1])
        sec = time.perf_counter() - t0
        c = total.draft_seconds / max(total.target_calls, 1) / k / step
        out.append(DraftPoint(name, k, total.alpha, c, total.tokens_per_target_call,
                              plain / sec, theoretical_speedup(total.alpha, k, c)))
    return out


def alpha_needed(c: float, speedup: float, k: int) -> float:
    """The smallest alpha at which a chain of ``k`` reaches ``speedup`` at cost ``c``."""
    lo, hi = 0.0, 1.0
    if theoretical_speedup(1.0, k, c) < speedup:
        return float("nan")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if theoretical_speedup(mid, k, c) < speedup else (lo, mid)
    return hi


def alpha_c_figure(points: Sequence[DraftPoint], speedups=(1.0, 1.25, 1.5, 2.0)) -> go.Figure:
    """The drafts on (c, alpha), over the curves where the formula gives each speedup."""
    k = points[0].k if points else 3
    cs = [i / 100 for i in range(0, 61, 2)]
    fig = go.Figure()
    for s in speedups:
        fig.add_trace(go.Scatter(x=cs, y=[alpha_needed(c, s, k) for c in cs], mode="lines",
                                 line={"dash": "dot", "width": 1}, name=f"{s:g}x (k={k})"))
    fig.add_trace(go.Scatter(
        x=[p.c for p in points], y=[p.alpha for p in points], mode="markers+text",
        text=[f"{p.name}: {p.speedup:.2f}x" for p in points], textposition="top center",
        marker={"size": 12}, name="drafts (measured)"))
    return layout(fig, "Drafts trained for the target: acceptance against cost", "c (a draft "
                  "step / a target step)", "alpha (per-token acceptance)",
                  yaxis={"range": [0, 1.05]})


# -- section 8: the tree, the mask, the accepted path ----------------------------------------
class RecordingDrafter:
    """A TreeDrafter that passes everything through and keeps each round's tree and
    what the target kept of it, for :class:`TreeStepper`."""

    def __init__(self, inner):
        self.inner, self.rounds = inner, []  # [(TokenTree, Round)]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose_tree(self) -> TokenTree:
        self._tree = self.inner.propose_tree()
        return self._tree

    def commit(self, round: Round) -> None:
        self.rounds.append((self._tree, round))
        self.inner.commit(round)


def tree_figure(tree: TokenTree, path: list[int], nxt: int, decode: Callable[[list[int]], str],
                ancestors: Callable = ancestor_mask) -> go.Figure:
    """Left: the tree (depth across, nodes down; the accepted path green, the token the
    target added after it in orange). Right: the (N, N) mask it was verified with."""
    fig = make_subplots(1, 2, column_widths=[0.6, 0.4], subplot_titles=(
        "the tree the draft proposed", "tree attention mask (row attends to column)"))
    depths = tree.depths()
    row_of: dict[int, int] = {}
    ys = []
    for d in depths:
        row_of[d] = row_of.get(d, -1) + 1
        ys.append(-row_of[d])
    xs = [float(d) for d in depths]
    for i, par in enumerate(tree.parents):  # edges
        px, py = (0.0, 0.0) if par < 0 else (xs[par], ys[par])
        fig.add_trace(go.Scatter(x=[px, xs[i]], y=[py, ys[i]], mode="lines", showlegend=False,
                                 line={"color": "#bbb"}, hoverinfo="skip"), 1, 1)
    kept = set(path)
    label = [repr(decode([t]))[1:-1] for t in tree.tokens]
    fig.add_trace(go.Scatter(x=[0.0] + xs, y=[0.0] + ys, mode="markers+text", showlegend=False,
                             text=["root"] + label, textposition="middle right",
                             marker={"size": 14, "color": ["#444"] + [
                                 "#2ca02c" if i in kept else "#ccc" for i in range(len(xs))]}),
                  1, 1)
    end = path[-1] if path else -1
    fig.add_trace(go.Scatter(x=[xs[end] + 1 if path else 1.0], y=[ys[end] if path else 0.0],
                             mode="markers+text", text=[repr(decode([nxt]))[1:-1]],
                             textposition="middle right", marker={"size": 14,
                                                                  "color": "#ff7f0e"},
                             name="the target's own next token"), 1, 1)
    if len(tree):
        m = torch.as_tensor(ancestors(tree.parents), dtype=torch.float32)
        fig.add_trace(go.Heatmap(z=m.flip(0).tolist(), showscale=False,
                                 colorscale=[[0, "#fff"], [1, "#1f77b4"]],
                                 y=[str(i) for i in range(len(tree))][::-1],
                                 x=[str(i) for i in range(len(tree))]), 1, 2)
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    return fig.update_layout(height=420, margin={"t": 60})


class TreeStepper:
    """A slider over the rounds of one tree speculative decode."""

    def __init__(self, target: Transformer, drafter, prompt: list[int], n_new: int, tok,
                 ancestors: Callable | None = None):
        self.rec = RecordingDrafter(drafter)
        self.out, _ = tree_speculative_decode(target, self.rec, prompt, n_new,
                                              ancestors=ancestors)
        self.tok, self.ancestors = tok, ancestors or ancestor_mask
        self.rounds = [(t, r) for t, r in self.rec.rounds if len(t)]
        self.slider = W.IntSlider(0, 0, max(0, len(self.rounds) - 1), description="round")
        self.readout, self.figure = W.HTML(), W.Output()
        self.slider.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> None:
        from IPython.display import display

        if not self.rounds:
            self.readout.value = "no tree was proposed"
            return
        tree, r = self.rounds[self.slider.value]
        kept = [tree.tokens[n] for n in r.path] + [r.next_token]
        self.readout.value = (f"round {self.slider.value + 1} of {len(self.rounds)}: "
                              f"{len(tree)} nodes, accepted {len(r.path)} of depth "
                              f"{max(tree.depths())}; kept <code>"
                              f"{self.tok.decode(kept)!r}</code>")
        self.figure.clear_output(wait=True)
        with self.figure:
            display(tree_figure(tree, r.path, r.next_token, self.tok.decode, self.ancestors))

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(W.VBox([self.slider, self.readout, self.figure]))


# -- section 9: sampling with trees ------------------------------------------------------------
def sibling_rule(accept_among_siblings: Callable) -> Callable:
    """The tree rule ``(p, tree, gen) -> (path, next)`` that judges each node's children
    with ``accept_among_siblings(p, children, q, us)`` (the learner's, or a wrong one)."""
    def rule(p: torch.Tensor, tree: TokenTree, gen: torch.Generator | None):
        path, node = [], -1
        while True:
            kids = tree.children(node)
            if not kids:  # a leaf: the target's own token after it
                return path, int(torch.multinomial(p[node + 1], 1, generator=gen))
            us = torch.rand(len(kids), generator=gen, dtype=torch.float64).tolist()
            q = tree.q[kids] if tree.q is not None else torch.nn.functional.one_hot(
                torch.tensor([tree.tokens[c] for c in kids]), p.shape[-1]).to(p.dtype)
            dist = accept_among_siblings(p[node + 1], [tree.tokens[c] for c in kids], q, us)
            x = int(torch.multinomial(dist, 1, generator=gen))
            child = next((c for c in kids if tree.tokens[c] == x), None)
            if child is None or float(dist[x]) < 1.0:  # all rejected: x ends the round
                return path, x
            path.append(child)
            node = child
    return rule


def toy_pair(vocab: int = 8) -> tuple[Transformer, Transformer]:
    """A toy target and a different toy draft over ``vocab`` tokens (random weights)."""
    def tiny(seed: int, layers: int) -> Transformer:
        torch.manual_seed(seed)
        m = Transformer(ModelConfig(vocab_size=vocab, n_layer=layers, n_head=2, d_model=32,
                                    max_seq_len=64)).eval()
        with torch.no_grad():
            m.tok_emb.weight.mul_(3.0)
        return m
    return tiny(3, 2), tiny(4, 1)


@torch.inference_mode()
def exact_two_tokens(target: Transformer, prompt: Sequence[int]) -> torch.Tensor:
    """(V, V): the target's exact probability of each pair of next two tokens at T = 1."""
    V = target.config.vocab_size
    p1 = torch.softmax(target(torch.tensor([list(prompt)]))[0, -1].double(), -1)
    p2 = torch.softmax(target(torch.tensor([[*prompt, a] for a in range(V)]))[:, -1].double(),
                       -1)
    return p1[:, None] * p2


def tree_distribution_test(rule: Callable, n: int, branching=(3, 2), prompt=(1, 2)
                           ) -> tuple[float, float]:
    """(chi-square, p-value) of the first two tokens of ``n`` sampled tree decodes on
    the toy pair, judged by ``rule``, against the target's exact distribution."""
    from tqdm.auto import tqdm

    from ..speculative.tree_decode import ModelTreeDrafter

    target, draft = toy_pair()
    V = target.config.vocab_size
    counts = torch.zeros(V * V)
    for i in tqdm(range(n), desc="tree samples", leave=False):
        s = Sampling(temperature=1.0, seed=i)
        out, _ = tree_speculative_decode(target, ModelTreeDrafter(draft, branching, s),
                                         list(prompt), 2, sampling=s, rule=rule)
        counts[out[0] * V + out[1]] += 1
    stat, _, pval = chi_square(counts, exact_two_tokens(target, prompt).flatten())
    return stat, pval


__all__ = [
    "DraftPoint",
    "RecordingDrafter",
    "TreeStepper",
    "alpha_c_figure",
    "alpha_needed",
    "exact_two_tokens",
    "learned_points",
    "sibling_rule",
    "toy_pair",
    "tree_distribution_test",
    "tree_figure",
]
