"""Exercises of lab 05 (speculative decoding; Leviathan et al. 2023, Chen et al. 2023).

* temperature_probs (warm-up): the distribution a model samples from at temperature T,
  ``softmax(z / T)``, computed so that huge logits (or a small T) cannot overflow.
* accept_or_resample (technique): one step of the acceptance rule. The drafted token d
  (drawn from the draft's q) is kept when ``u < min(1, p(d) / q(d))``; otherwise the next
  token is drawn from the residual ``norm(max(0, p - q))``. Returning the *distribution*
  of the emitted token (one-hot on d, or the residual) keeps the answer deterministic.
* verify_draft (technique, :mod:`.speculative_verify`): the full k-token verify built on
  accept_or_resample, with the bonus token from p_{k+1} when every draft is kept.
* expected_tokens_per_call (warm-up): with per-token acceptance probability a and k draft
  tokens, a target call yields ``(1 - a^(k+1)) / (1 - a)`` tokens on average (``k + 1`` at
  a = 1): the accepted prefix plus one corrected or bonus token.
* speculative_speedup (warm-up): the same divided by the call's cost in target steps,
  ``k c + 1``.
* tree_attention_mask, accept_among_siblings (techniques, :mod:`.speculative_tree`): the
  mask that verifies a token tree in one forward, and the sibling rule that keeps tree
  speculative sampling exact.

The predictions (``PREDICTIONS``) ask for the tokens per target call and the best k from
the alpha and c measured in the lab, before the sweep measures them.
"""

from __future__ import annotations

import random

import torch

from . import catalog, speculative_tree, speculative_verify
from .checker import Case, Exercise, Mistake
from .predictions import Prediction

LAB = catalog.SPECULATIVE  # the notebook's name


# -- references -------------------------------------------------------------------------
def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last axis (the vocabulary), in the logits' dtype.

    Subtracting the row's maximum first changes nothing mathematically (it cancels in the
    ratio) but keeps every exponent <= 0: huge logits or a small T cannot overflow to inf.
    """
    z = (logits - logits.amax(-1, keepdim=True)) / temperature  # (..., V), max 0 per row
    e = z.exp()
    return e / e.sum(-1, keepdim=True)


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
def _naive_softmax(logits, temperature):
    e = (logits / temperature).exp()  # overflows to inf for large logits: inf / inf = nan
    return e / e.sum(-1, keepdim=True)


def _times_t(logits, temperature):
    return torch.softmax(logits * temperature, dim=-1)


def _no_temperature(logits, temperature):
    return torch.softmax(logits, dim=-1)


def _softmax_first_axis(logits, temperature):
    return torch.softmax(logits / temperature, dim=0)


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


def _random_probs_case(rng: random.Random) -> Case:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    shape = rng.choice([(rng.randint(2, 50),), (rng.randint(2, 5), rng.randint(2, 30))])
    scale = rng.choice([1.0, 5.0, 40.0])  # logits of a trained model, or far larger
    logits = torch.randn(*shape, generator=g) * scale + rng.uniform(-200, 200)
    return Case((logits, rng.choice([0.1, 0.25, 0.5, 1.0, 1.5, 2.0])))


_BIG = torch.tensor([[1000.0, 999.0, 990.0, 0.0]])  # exp(1000) overflows float32 and float64


def _probs_fixed_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [Case((torch.tensor([2.0, 1.0, 0.0, -1.0]), 1.0)),
            Case((torch.tensor([2.0, 1.0, 0.0, -1.0]), 0.5)),  # colder: more peaked
            Case((torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]), 2.0)),  # one row each
            Case((torch.randn(5, 64, generator=g) * 3, 0.7)),  # (k + 1, V): a verify's rows
            Case((_BIG, 1.0)),  # large logits
            Case((torch.tensor([60.0, 55.0, 0.0]), 0.25)),  # 240 / T: overflows exp in fp32
            Case((torch.tensor([-1000.0, -1001.0, -1005.0]), 1.0)),  # every exp underflows
            Case((_BIG.double(), 1.0))]  # and in float64, the dtype kept


class _ProbsExercise(Exercise):
    """temperature_probs: an answer with inf or NaN where the reference is finite is the
    overflow of an unshifted exp, whatever its other entries are."""

    def diagnose(self, case: Case, got):
        if isinstance(got, torch.Tensor) and torch.is_floating_point(got) and not bool(
                torch.isfinite(got).all()):
            return _OVERFLOW_HINT
        return super().diagnose(case, got)


_OVERFLOW_HINT = ("Your answer has inf or NaN on large logits: exp(1000) overflows, and inf / "
                  "inf is NaN (all exps underflowing to 0 gives 0 / 0). Shift each row by "
                  "its maximum before the exp: the shift cancels in the ratio and every "
                  "exponent is then <= 0.")
_P, _Q = _t(0.1, 0.6, 0.3, 0.0), _t(0.4, 0.2, 0.2, 0.2)

EXERCISES = [
    _ProbsExercise(
        "temperature_probs", LAB, temperature_probs,
        fixed_cases=_probs_fixed_cases(),
        random_case=_random_probs_case,
        # float32 logits near 200 divided by T = 0.1 round differently in each (correct)
        # order of shift and division: about 1e-4 relative in the probabilities
        rtol=2e-3, atol=1e-7,
        hint="Both models' distributions at temperature T: divide the logits by T and "
             "normalise their exponentials over the vocabulary (the last axis), one "
             "distribution per row. A small T sharpens the distribution, a large one "
             "flattens it. Logits of 1000 are legal: an exponential of them overflows, so "
             "shift each row first by a constant that cancels in the normalisation.",
        code_hint="z = (logits - logits.amax(-1, keepdim=True)) / temperature; "
                  "return z.exp() / z.exp().sum(-1, keepdim=True)  (or "
                  "torch.softmax(logits / temperature, dim=-1), which shifts for you). "
                  "Keep the logits' dtype.",
        mistakes=[
            Mistake("no max shift", _naive_softmax, _OVERFLOW_HINT),
            Mistake("times T", _times_t,
                    "You multiplied by the temperature: the logits are divided by T, so a "
                    "T below 1 sharpens the distribution."),
            Mistake("no temperature", _no_temperature,
                    "You ignored the temperature: every sampling step (and so the draft's q "
                    "and the target's p) uses the logits divided by T."),
            Mistake("wrong axis", _softmax_first_axis,
                    "Normalise over the vocabulary (the last axis), one distribution per row, "
                    "not over the rows."),
        ],
    ),
    Exercise(
        "accept_or_resample", LAB, accept_or_resample,
        fixed_cases=[Case((_P, _Q, 0, 0.1)),  # p/q = 0.25 and u < 0.25: accept
                     Case((_P, _Q, 0, 0.6)),  # p/q = 0.25 and u >= 0.25: residual
                     Case((_t(0.5, 0.3, 0.2, 0.0), _t(0.25, 0.25, 0.25, 0.25), 0, 0.9)),
                     Case((_P, _Q, 3, 0.0)),  # the target never emits token 3: reject
                     Case((_Q, _Q, 2, 0.999))],  # identical distributions: always accept
        random_case=_random_accept_case,
        rtol=1e-6, atol=1e-9, kind="technique",
        hint="Keep the draft with probability equal to the target's probability of it over "
             "the draft's, capped at 1, deciding with the uniform u. A kept draft is "
             "certain (all the mass on d). After a rejection the token comes from where the "
             "target wants more than the draft gave: the positive part of their difference, "
             "normalised to sum to 1.",
        code_hint="if u < min(1.0, float(p[d] / q[d])): return "
                  "torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).to(p.dtype); "
                  "r = (p - q).clamp(min=0); return r / r.sum()",
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
    speculative_verify.exercise(LAB, accept_or_resample),
    Exercise(
        "expected_tokens_per_call", LAB, expected_tokens_per_call,
        fixed_cases=[Case((0.5, 4)), Case((0.8, 1)), Case((0.0, 3)), Case((0.9, 8)),
                     Case((1.0, 5))],
        random_case=_random_tokens_case,
        rtol=1e-9,
        hint="Draft token i is reached only if the i - 1 before it were accepted (probability "
             "a^(i-1)); every call also emits one token of its own (the correction, or the "
             "bonus). Add up the chances of each token being emitted; mind a equal to 1, where the "
             "closed form divides by zero.",
        code_hint="return k + 1.0 if alpha == 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)",
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
             "draft steps (each c target steps) plus one target call, and yields the "
             "expected tokens per call of the previous exercise.",
        code_hint="return expected_tokens_per_call(alpha, k) / (k * c + 1)",
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
    *speculative_tree.exercises(LAB),
]

PREDICTIONS = [
    Prediction(
        "spec_tokens_per_call", LAB,
        "From the alpha measured in section 1 (code-s drafting for code-m, greedy), how many "
        "tokens per target call will the sweep measure at its largest k? Passing is within "
        "20% of the measured value.",
        "tokens per target call", rel_tol=0.2,
        explain="A call emits 1 + alpha + ... + alpha^k tokens on average when each draft is "
                "kept with probability alpha independently. Real acceptances come in runs "
                "(easy stretches of code, then hard ones), and section 1's alpha came from "
                "one prompt, so the measurement drifts from the formula."),
    Prediction(
        "spec_best_k", LAB,
        "From the alpha and c measured in section 1, which of the k the sweep tries will "
        "give the best measured speedup? Passing is within ±1 of the measured best k.",
        "draft tokens (k)", abs_tol=1,
        explain="The formula's best k maximises (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1)): "
                "each extra draft token costs c for every call but adds only alpha^k "
                "expected tokens. A cheap draft (small c) with a high alpha wants a large k; "
                "noise in the timings moves the measured best by a step when the curve is "
                "flat near its top. Where no k pays (every speedup below 1, as on a busy CPU), "
                "the best k is the one that loses least: the smallest, unless alpha is high."),
]
