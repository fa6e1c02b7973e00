"""Lab 05's token-tree exercises (SpecInfer, Miao et al. 2024; Medusa; EAGLE).

* tree_attention_mask (technique): a tree of candidate tokens is verified in ONE target
  forward if every node attends to the context, itself and its ancestors only: the
  (N, N) mask from the parent pointers. Lab 05 then verifies its trees with the
  learner's mask (``tree_speculative_decode(..., ancestors=...)``), and greedy output
  must still equal the target's.
* accept_among_siblings (technique): the sibling rule of tree speculative sampling. At
  a node the target has p; the children x_1..x_n were drawn from the draft's q_1..q_n.
  Try them in order: keep x_i when u_i < min(1, r(x_i) / q_i(x_i)), where r starts as p
  and after each rejection becomes norm(max(0, r - q_i)); when all are rejected the
  token is drawn from the last r. The answer is the distribution of the emitted token
  (one-hot on the kept child, or the final residual), as in accept_or_resample.
"""

from __future__ import annotations

import random

import torch

from .checker import Case, Exercise, Mistake


# -- references -------------------------------------------------------------------------
def tree_attention_mask(parents: list[int]) -> torch.Tensor:
    """(N, N) bool: mask[i, j] is True when node j is node i or one of its ancestors.

    parents[i] is node i's parent (-1: a child of the root, the last committed token);
    parents come before their children, so one pass in order sees each parent first.
    """
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]  # everything the parent sees...
        mask[i, i] = True  # ...and the node itself
    return mask


def accept_among_siblings(p: torch.Tensor, children: list[int], q: torch.Tensor,
                          us: list[float]) -> torch.Tensor:
    """Distribution (V,) of the token emitted below a node, by recursive rejection.

    p: (V,) the target's distribution at the node; children: the sibling tokens, in the
    order they are tried; q: (n, V) the draft distribution each was drawn from; us: one
    uniform per sibling. One-hot on the first kept child; else the residual left.
    """
    r = p.clone()  # (V,) what the target still wants
    for x, q_i, u in zip(children, q, us):
        if u < min(1.0, float(r[x] / q_i[x])):
            return torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p.dtype)
        residual = (r - q_i).clamp(min=0)  # (V,) the mass this sibling could not cover
        if residual.sum() > 0:  # zero only if r equalled q_i, where x is always kept
            r = residual / residual.sum()
    return r


# -- wrong answers a learner might write ----------------------------------------------------
def _parent_only(parents):
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i, p] = True
    return mask


def _no_self(parents):
    return tree_attention_mask(parents) & ~torch.eye(len(parents), dtype=torch.bool)


def _transposed(parents):
    return tree_attention_mask(parents).T.contiguous()


def _causal(parents):
    return torch.ones(len(parents), len(parents), dtype=torch.bool).tril()


def _against_original_p(p, children, q, us):
    for x, q_i, u in zip(children, q, us):
        if u < min(1.0, float(p[x] / q_i[x])):
            return torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p.dtype)
    return p.clone()


def _residual_of_p(p, children, q, us):
    r = p.clone()
    for x, q_i, u in zip(children, q, us):
        if u < min(1.0, float(r[x] / q_i[x])):
            return torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p.dtype)
        residual = (p - q_i).clamp(min=0)  # from p every time: earlier siblings forgotten
        if residual.sum() > 0:
            r = residual / residual.sum()
    return r


def _first_sibling_only(p, children, q, us):
    x, q_0 = children[0], q[0]
    if us[0] < min(1.0, float(p[x] / q_0[x])):
        return torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p.dtype)
    residual = (p - q_0).clamp(min=0)
    return residual / residual.sum() if residual.sum() > 0 else p.clone()


def _not_renormalised(p, children, q, us):
    r = p.clone()
    for x, q_i, u in zip(children, q, us):
        if u < min(1.0, float(r[x] / q_i[x])):
            return torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).to(p.dtype)
        r = (r - q_i).clamp(min=0)
    return r


# -- cases ------------------------------------------------------------------------------
def _random_parents(rng: random.Random) -> list[int]:
    n = rng.randint(1, 14)
    return [rng.randint(-1, i - 1) if rng.random() < 0.8 else -1 for i in range(n)]


def _mask_cases() -> list[Case]:
    return [Case(([-1],)), Case(([-1, 0, 1, 2],)),  # one node; a chain (causal)
            Case(([-1, -1, -1],)),  # three siblings: each sees only itself
            Case(([-1, -1, 0, 0, 1, 2],)),  # the lab's example tree
            Case(([-1, 0, 0, 1, 1, 2, 2, -1, 7],))]


def _sibling_case(seed: int, V: int, n: int, spread: float, u_max: float = 1.0) -> Case:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(V, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(z, -1)  # (V,)
    q = torch.softmax(z + spread * torch.randn(n, V, generator=g, dtype=torch.float64), -1)
    children = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(n)]
    us = (torch.rand(n, generator=g, dtype=torch.float64) * u_max).tolist()
    return Case((p, children, q, us))


def _sibling_cases() -> list[Case]:
    f64 = {"dtype": torch.float64}
    p = torch.tensor([0.5, 0.3, 0.2, 0.0], **f64)
    q = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]], **f64)
    return [
        # token 3 is impossible for the target (rejected), then token 1 is tried against
        # the residual, which is p itself renormalised: kept when u < 0.3
        Case((p, [3, 1], q[:2], [0.5, 0.2])),
        Case((p, [3, 1], q[:2], [0.5, 0.4])),  # both rejected: the residual of both
        # the second sibling is judged against what the first left: r(0) = 0 after a
        # sibling whose q covered it, so token 0 cannot be kept a second time
        Case((p, [0, 0], q[[2, 2]], [0.99, 0.0])),
        Case((p, [1], q[1:2], [0.9])),  # one child, rejected: a plain accept_or_resample
        _sibling_case(1, 12, 3, 1.5), _sibling_case(2, 12, 4, 3.0, 0.3),
        _sibling_case(3, 20, 2, 0.5), _sibling_case(4, 8, 5, 2.0, 0.6),
    ]


def exercises(lab: str) -> list[Exercise]:
    """The two tree exercises, for lab ``lab``."""
    return [_mask_exercise(lab), _sibling_exercise(lab)]


def _mask_exercise(lab: str) -> Exercise:
    return Exercise(
        "tree_attention_mask", lab, tree_attention_mask,
        fixed_cases=_mask_cases(),
        random_case=lambda rng: Case((_random_parents(rng),)),
        n_random=30, kind="technique",
        hint="Node i must score its token as if its branch were the only text after the "
             "context: it may see itself and the nodes on its way up to the root, and no "
             "sibling or cousin. Parents come before their children, so walking the nodes "
             "in order you can start each node's row from its parent's row. Return a "
             "boolean tensor of shape (N, N), row i for the node that attends.",
        code_hint="mask = torch.zeros(n, n, dtype=torch.bool); for i, p in "
                  "enumerate(parents): if p >= 0: mask[i] = mask[p]; mask[i, i] = True",
        mistakes=[
            Mistake("parent only", _parent_only,
                    "A node saw itself and its parent only: it must see every ancestor "
                    "(its parent's row, not just its parent)."),
            Mistake("no diagonal", _no_self,
                    "A node must also see itself: its own key is part of the attention, as "
                    "in the causal mask."),
            Mistake("transposed", _transposed,
                    "Row i is the node that attends and column j the node it may see: you "
                    "gave each node its descendants."),
            Mistake("causal mask", _causal,
                    "That is the chain's causal mask: in a tree, a node after its sibling in "
                    "the order must not see that sibling."),
        ],
    )


def _sibling_exercise(lab: str) -> Exercise:
    return Exercise(
        "accept_among_siblings", lab, accept_among_siblings,
        fixed_cases=_sibling_cases(),
        random_case=lambda rng: _sibling_case(rng.randrange(2**31), rng.randint(2, 24),
                                              rng.randint(1, 5), rng.uniform(0.2, 3),
                                              rng.choice([1.0, 0.4])),
        n_random=30, kind="technique", rtol=1e-9,
        hint="Try the siblings in order, each with the one-step rule, but not against p "
             "every time: after a rejection, what the target still wants is the residual "
             "max(0, r - q_i), renormalised, and the next sibling is judged against that "
             "(it was drawn independently from q, like the rejected one). Return a one-hot "
             "on the first kept child, or the residual left when none is kept.",
        code_hint="r = p.clone(); for x, q_i, u in zip(children, q, us): if u < min(1, "
                  "r[x] / q_i[x]): return one_hot(x); res = (r - q_i).clamp(min=0); if "
                  "res.sum() > 0: r = res / res.sum(). After the loop: return r",
        mistakes=[
            Mistake("judged against the original p", _against_original_p,
                    "Every sibling was judged against the target's p: after a rejection the "
                    "target's remaining want is the residual, and the next sibling must be "
                    "judged against it, or tokens the rejected sibling covered are "
                    "over-sampled (the distribution test below catches it)."),
            Mistake("residual of p each time", _residual_of_p,
                    "Each residual was taken from p, forgetting the siblings before: "
                    "subtract q_i from the running residual r, not from p."),
            Mistake("first sibling only", _first_sibling_only,
                    "Only the first child was tried: after it is rejected the others are "
                    "still candidates, judged against the residual."),
            Mistake("not renormalised", _not_renormalised,
                    "The residual must be renormalised to sum to 1 after each rejection; "
                    "min(1, r(x) / q(x)) compares probabilities."),
        ],
    )
