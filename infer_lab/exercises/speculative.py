"""Exercises of lab 05 (speculative decoding; Leviathan et al. 2023, Chen et al. 2023).

* accept_or_resample: one step of the acceptance rule. The drafted token d (drawn from
  the draft's q) is kept when ``u < min(1, p(d) / q(d))``; otherwise the next token is
  drawn from the residual ``norm(max(0, p - q))``. Returning the *distribution* of the
  emitted token (one-hot on d, or the residual) keeps the answer deterministic.
* expected_tokens_per_call: with per-token acceptance probability a and k draft tokens,
  a target call yields ``(1 - a^(k+1)) / (1 - a)`` tokens on average (``k + 1`` at a = 1):
  the accepted prefix plus one corrected or bonus token.
* speculative_speedup: the same divided by the call's cost in target steps, ``k c + 1``.
"""

from __future__ import annotations

import random

import torch

from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.SPECULATIVE  # the notebook's name


# -- references -------------------------------------------------------------------------
def accept_or_resample(p: torch.Tensor, q: torch.Tensor, d: int, u: float) -> torch.Tensor:
    """Distribution (V,) of the token emitted at a draft position.

    p, q: (V,) target and draft probabilities; d: the drafted token (drawn from q);
    u: a uniform draw in [0, 1). Accepted: one-hot on d. Rejected: norm(max(0, p - q)).
    """
    if u < min(1.0, float(p[d] / q[d])):
        return torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).to(p.dtype)  # (V,)
    residual = (p - q).clamp(min=0)  # (V,) where the target wants more than the draft gave
    return residual / residual.sum()


def expected_tokens_per_call(alpha: float, k: int) -> float:
    """Mean tokens one target call produces: 1 + a + a^2 + ... + a^k."""
    if alpha == 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def speculative_speedup(alpha: float, k: int, c: float) -> float:
    """Expected speedup over plain decoding when a draft step costs c target steps."""
    return expected_tokens_per_call(alpha, k) / (k * c + 1)


# -- wrong answers a learner might write ----------------------------------------------------
def _onehot(p: torch.Tensor, d: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).to(p.dtype)


def _accept_if_p_ge_q(p, q, d, u):
    if float(p[d]) >= float(q[d]):
        return _onehot(p, d)
    r = (p - q).clamp(min=0)
    return r / r.sum()


def _resample_from_p(p, q, d, u):
    return _onehot(p, d) if u < min(1.0, float(p[d] / q[d])) else p.clone()


def _ratio_upside_down(p, q, d, u):
    ratio = float(q[d] / p[d]) if float(p[d]) > 0 else float("inf")
    if u < min(1.0, ratio):
        return _onehot(p, d)
    r = (p - q).clamp(min=0)
    return r / r.sum()


def _residual_not_normalised(p, q, d, u):
    return _onehot(p, d) if u < min(1.0, float(p[d] / q[d])) else (p - q).clamp(min=0)


def _tokens_no_bonus(a, k):
    return expected_tokens_per_call(a, k) - 1


def _tokens_one_short(a, k):
    return float(k) if a == 1.0 else (1 - a ** k) / (1 - a)


# -- cases ------------------------------------------------------------------------------
def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def _random_accept_case(rng: random.Random) -> Case:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    V = rng.randint(2, 40)
    z = torch.randn(V, generator=g, dtype=torch.float64) * rng.uniform(0.5, 3)
    p = torch.softmax(z, -1)  # (V,)
    # A draft that roughly agrees with the target, as a trained small model does.
    noise = torch.randn(V, generator=g, dtype=torch.float64) * rng.uniform(0.2, 2)
    q = torch.softmax(z + noise, -1)  # (V,)
    d = int(torch.multinomial(q, 1, generator=g))
    return Case((p, q, d, rng.random()))


def _random_tokens_case(rng: random.Random) -> Case:
    return Case((1.0 if rng.random() < 0.1 else round(rng.uniform(0, 0.99), 3),
                 rng.randint(1, 12)))


def _random_speedup_case(rng: random.Random) -> Case:
    return Case((*_random_tokens_case(rng).args, round(rng.uniform(0, 1.5), 3)))


_P, _Q = _t(0.1, 0.6, 0.3, 0.0), _t(0.4, 0.2, 0.2, 0.2)

EXERCISES = [
    Exercise(
        "accept_or_resample", LAB, accept_or_resample,
        fixed_cases=[Case((_P, _Q, 0, 0.1)),  # p/q = 0.25 and u < 0.25: accept
                     Case((_P, _Q, 0, 0.6)),  # p/q = 0.25 and u >= 0.25: residual
                     Case((_t(0.5, 0.3, 0.2, 0.0), _t(0.25, 0.25, 0.25, 0.25), 0, 0.9)),
                     Case((_P, _Q, 3, 0.0)),  # the target never emits token 3: reject
                     Case((_Q, _Q, 2, 0.999))],  # identical distributions: always accept
        random_case=_random_accept_case,
        rtol=1e-6, atol=1e-9,
        hint="Accept d when u < min(1, p[d] / q[d]) and return a one-hot vector on d; "
             "otherwise return max(0, p - q) divided by its sum.",
        mistakes=[
            Mistake("p >= q", _accept_if_p_ge_q,
                    "A token the target likes less than the draft (p[d] < q[d]) is still "
                    "kept with probability p[d] / q[d]: compare u with min(1, p[d] / q[d])."),
            Mistake("resample from p", _resample_from_p,
                    "After a rejection draw from the residual max(0, p - q), normalised, not "
                    "from p: the accepted drafts already supplied min(p, q) of the mass."),
            Mistake("ratio upside down", _ratio_upside_down,
                    "The acceptance probability is p[d] / q[d] (target over draft)."),
            Mistake("not normalised", _residual_not_normalised,
                    "max(0, p - q) sums to less than 1: divide it by its sum."),
        ],
    ),
    Exercise(
        "expected_tokens_per_call", LAB, expected_tokens_per_call,
        fixed_cases=[Case((0.5, 4)), Case((0.8, 1)), Case((0.0, 3)), Case((0.9, 8)),
                     Case((1.0, 5))],
        random_case=_random_tokens_case,
        rtol=1e-9,
        hint="Draft token i is reached only if the i - 1 before it were accepted (probability "
             "a^(i-1)); every call also emits one token of its own. Sum 1 + a + ... + a^k, "
             "and return k + 1 when a = 1 (the formula divides by zero there).",
        mistakes=[
            Mistake("no bonus", _tokens_no_bonus,
                    "You counted the accepted draft tokens only: every target call also emits "
                    "one token of its own (the correction, or the bonus after k accepts)."),
            Mistake("one term short", _tokens_one_short,
                    "With k draft tokens the sum 1 + a + ... + a^k has k + 1 terms: the "
                    "numerator is 1 - a^(k+1)."),
            Mistake("linear", lambda a, k: 1 + k * a,
                    "The first rejection ends the call: draft token i counts only if all "
                    "before it were accepted, with probability a^i, not a."),
        ],
    ),
    Exercise(
        "speculative_speedup", LAB, speculative_speedup,
        fixed_cases=[Case((0.5, 1, 0.3)), Case((0.8, 4, 0.05)), Case((0.0, 2, 0.5)),
                     Case((1.0, 4, 1.0)), Case((0.95, 8, 0.0))],
        random_case=_random_speedup_case,
        rtol=1e-9,
        hint="Plain decoding makes 1 token per target step. One speculative call costs k "
             "draft steps (k c target steps) plus one target call, and yields the expected "
             "tokens per call of the previous exercise.",
        mistakes=[
            Mistake("free draft", lambda a, k, c: expected_tokens_per_call(a, k),
                    "The draft is not free: divide by the call's cost, k c + 1 target steps."),
            Mistake("no target call",
                    lambda a, k, c: expected_tokens_per_call(a, k) / max(k * c, 1e-12),
                    "The call's cost is k draft steps PLUS the target's own forward: k c + 1."),
            Mistake("one draft step", lambda a, k, c: expected_tokens_per_call(a, k) / (c + 1),
                    "The draft runs once per proposed token: k steps cost k c."),
        ],
    ),
]
