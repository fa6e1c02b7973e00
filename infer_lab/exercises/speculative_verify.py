"""Lab 05's technique exercise: the full k-token verify step, with the bonus token.

Speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023): the draft
proposed d_1..d_k from q_1..q_k, and ONE target forward gave p_1..p_{k+1}. Judge the drafts
left to right with the one-step rule (:func:`accept_or_resample`); the first rejection
emits a draw from the residual and ends the call; when all k are kept, a *bonus* token
comes from p_{k+1}, the target's distribution after the last draft. Each call thus emits
between 1 and k + 1 tokens, distributed exactly as the target's.

Grading needs the same random numbers for the learner and the reference, so the random
generator is an argument and its use is part of the contract (the same as
:func:`infer_lab.speculative.verify`): one ``torch.rand((), generator=gen)`` per draft
token judged, as it is judged, and one ``torch.multinomial(dist, 1, generator=gen)`` for
the token after the accepted ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from .checker import Case, Exercise, Mistake, _short

Accept = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]


# -- reference --------------------------------------------------------------------------
def verify_draft(p: torch.Tensor, q: torch.Tensor, draft: list[int], gen: torch.Generator,
                 accept: "Accept") -> tuple[list[int], int]:  # noqa: UP037  pasted in a lab
    """The tokens one speculative call emits, and how many drafts were accepted.

    p: (k+1, V) target probabilities at each draft position and one past it; q: (k, V)
    draft probabilities; draft: the k drafted tokens; gen: the random generator;
    accept: ``accept_or_resample(p_i, q_i, d, u)`` -> (V,) distribution of the emitted token.
    """
    for i, d in enumerate(draft):
        u = torch.rand((), generator=gen).item()  # one uniform per judged draft, in order
        dist = accept(p[i], q[i], d, u)  # (V,) one-hot on d, or the residual
        if dist[d] == 1:  # kept: the residual never puts mass on a rejected d
            continue
        token = int(torch.multinomial(dist, 1, generator=gen))  # the correction
        return draft[:i] + [token], i  # the first rejection ends the call
    bonus = int(torch.multinomial(p[len(draft)], 1, generator=gen))  # all k kept: p_{k+1}
    return draft + [bonus], len(draft)


# -- wrong answers a learner might write ----------------------------------------------------
def _no_bonus(p, q, draft, gen, accept):
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, torch.rand((), generator=gen).item())
        if dist[d] != 1:
            return draft[:i] + [int(torch.multinomial(dist, 1, generator=gen))], i
    return list(draft), len(draft)


def _continue_after_rejection(p, q, draft, gen, accept):
    out, n = [], 0
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, torch.rand((), generator=gen).item())
        if dist[d] == 1:
            out.append(d)
            n += 1
        else:
            out.append(int(torch.multinomial(dist, 1, generator=gen)))
    return out + [int(torch.multinomial(p[len(draft)], 1, generator=gen))], n


def _resample_from_target(p, q, draft, gen, accept):
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, torch.rand((), generator=gen).item())
        if dist[d] != 1:
            return draft[:i] + [int(torch.multinomial(p[i], 1, generator=gen))], i
    return draft + [int(torch.multinomial(p[len(draft)], 1, generator=gen))], len(draft)


def _bonus_from_last_draft_row(p, q, draft, gen, accept):
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, torch.rand((), generator=gen).item())
        if dist[d] != 1:
            return draft[:i] + [int(torch.multinomial(dist, 1, generator=gen))], i
    return draft + [int(torch.multinomial(p[len(draft) - 1], 1, generator=gen))], len(draft)


def _judged_against_next_row(p, q, draft, gen, accept):
    for i, d in enumerate(draft):
        dist = accept(p[i + 1], q[i], d, torch.rand((), generator=gen).item())
        if dist[d] != 1:
            return draft[:i] + [int(torch.multinomial(dist, 1, generator=gen))], i
    return draft + [int(torch.multinomial(p[len(draft)], 1, generator=gen))], len(draft)


def _draws_every_token(p, q, draft, gen, accept):
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, torch.rand((), generator=gen).item())
        token = int(torch.multinomial(dist, 1, generator=gen))  # also for a one-hot
        if token != d:
            return draft[:i] + [token], i
    return draft + [int(torch.multinomial(p[len(draft)], 1, generator=gen))], len(draft)


def _uniforms_up_front(p, q, draft, gen, accept):
    us = [torch.rand((), generator=gen).item() for _ in draft]
    for i, d in enumerate(draft):
        dist = accept(p[i], q[i], d, us[i])
        if dist[d] != 1:
            return draft[:i] + [int(torch.multinomial(dist, 1, generator=gen))], i
    return draft + [int(torch.multinomial(p[len(draft)], 1, generator=gen))], len(draft)


# -- cases ------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_case(z: torch.Tensor, noise: torch.Tensor, seed: int, accept: Accept) -> Case:
    """A verify case from target logits z (k+1, V) and draft noise (k, V): the drafts are
    drawn from q = softmax(z[:k] + noise) with a generator of their own."""
    p = torch.softmax(z, -1)  # (k+1, V)
    q = torch.softmax(z[:-1] + noise, -1)  # (k, V)
    g = _gen(seed + 7919)
    draft = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(q.shape[0])]
    return Case((p, q, draft, _gen(seed), accept))


def _random_case(rng: random.Random, accept: Accept) -> Case:
    g = _gen(rng.randrange(2**31))
    k, V = rng.randint(1, 6), rng.randint(2, 30)
    z = torch.randn(k + 1, V, generator=g, dtype=torch.float64) * rng.uniform(0.5, 3)
    # A third of the drafts equal the target (every draft kept: the bonus token matters),
    # the others disagree a little or a lot (an early or a late rejection).
    spread = 0.0 if rng.random() < 1 / 3 else rng.uniform(0.3, 3)
    noise = torch.randn(k, V, generator=g, dtype=torch.float64) * spread
    return make_case(z, noise, rng.randrange(2**31), accept)


def _fixed_cases(accept: Accept) -> list[Case]:
    f64 = {"dtype": torch.float64}
    p = torch.tensor([[0.1, 0.6, 0.3, 0.0], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.2, 0.8]], **f64)
    cases = [
        # The draft equals the target: both drafts kept, the bonus comes from row 3.
        Case((p, p[:2].clone(), [1, 0], _gen(0), accept)),
        # Token 3 is impossible for the target: rejected at once, the residual picks.
        Case((p, torch.full((2, 4), 0.25, **f64), [3, 0], _gen(1), accept)),
        # The first draft kept (p >= q there), the second rejected (p[1, 3] << q[1, 3]).
        Case((p, torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 1.0]], **f64), [1, 3],
              _gen(2), accept)),
        # k = 1, always kept: one draft and the bonus.
        Case((p[1:], p[1:2].clone(), [0], _gen(3), accept)),
        # A float32 case with four drafts, drawn from a close draft.
        make_case(torch.randn(5, 12, generator=_gen(4)) * 2,
                  torch.randn(4, 12, generator=_gen(5)) * 0.3, 6, accept),
    ]
    return cases + [make_case(torch.randn(k + 1, 16, generator=_gen(10 + k), **f64) * 2,
                              torch.randn(k, 16, generator=_gen(20 + k), **f64) * s, 30 + k,
                              accept)
                    for k, s in ((3, 0.0), (3, 1.0), (6, 0.5), (2, 3.0))]


class VerifyExercise(Exercise):
    """An Exercise whose answer is (emitted tokens, n accepted): tokens may come back as a
    list, a tuple or a 1-D tensor; the generator shows as its seed."""

    def describe(self, case: Case) -> str:
        p, q, draft, gen, _accept = case.args
        return (f"{self.name}(p={_short(p)}, q={_short(q)}, draft={draft!r}, "
                f"gen=<generator seeded {gen.initial_seed()}>, accept=accept_or_resample)")

    @staticmethod
    def normalise(got: Any) -> tuple[list[int], int] | str:
        """(tokens, n) as plain Python values, or why the answer has the wrong form."""
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return (f"expected a pair (tokens, n_accepted), got {_short(got)}")
        tokens, n = got
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.flatten().tolist()
        if not isinstance(tokens, (list, tuple)):
            return f"expected the emitted tokens as a list of ints, got {_short(tokens)}"
        try:
            tokens = [int(t) for t in tokens]
            n = int(n)
        except (TypeError, ValueError):
            return f"expected a list of ints and an int, got {_short(got)}"
        return tokens, n

    def mismatch(self, case: Case, got: Any) -> str | None:
        got = self.normalise(got)
        if isinstance(got, str):
            return got
        want_tokens, want_n = self._call(self.reference, case)
        tokens, n = got
        if tokens != want_tokens:
            return f"expected tokens {want_tokens}, got {tokens}"
        if n != want_n:
            return f"the tokens are right, but expected {want_n} accepted, got {n}"
        return None

    def diagnose(self, case: Case, got: Any) -> str | None:
        got = self.normalise(got)
        return None if isinstance(got, str) else super().diagnose(case, got)


def exercise(lab: str, accept: Accept) -> VerifyExercise:
    """The verify_draft exercise, judging with ``accept`` (the reference one-step rule)."""
    return VerifyExercise(
        "verify_draft", lab, verify_draft,
        fixed_cases=_fixed_cases(accept),
        random_case=lambda rng: _random_case(rng, accept),
        n_random=30, kind="technique",
        hint="Walk the drafts in order, judging each with the one-step rule against the "
             "target's distribution at the same position. The first rejection emits the "
             "corrected token and ends the call: what the target would say after a token "
             "it never saw is unknown. If every draft survives, the target has already "
             "computed one more distribution (after the last draft): it gives one token "
             "more, for free. Use the generator exactly as the instructions say (one "
             "uniform per judged draft, one draw for the final token), or the checker "
             "cannot replay your random numbers.",
        code_hint="for i, d in enumerate(draft): u = torch.rand((), generator=gen).item(); "
                  "dist = accept(p[i], q[i], d, u); if dist[d] == 1: continue; else "
                  "return draft[:i] + [int(torch.multinomial(dist, 1, generator=gen))], i. "
                  "After the loop: return draft + [int(torch.multinomial(p[len(draft)], 1, "
                  "generator=gen))], len(draft).",
        mistakes=[
            Mistake("no bonus token", _no_bonus,
                    "When all k drafts are kept you returned only them: the target's forward "
                    "already scored the position after the last draft (row k + 1 of p), so "
                    "one more token comes free. Without it a call yields at most k tokens."),
            Mistake("continued after a rejection", _continue_after_rejection,
                    "You kept judging drafts after a rejection. The drafts after it were "
                    "conditioned on the rejected token, and so were the target's rows there: "
                    "the first rejection ends the call."),
            Mistake("resampled from the target", _resample_from_target,
                    "After a rejection the token comes from the distribution accept returns "
                    "(the residual), not from p: the accepted drafts already supplied "
                    "min(p, q) of the mass, and drawing from p counts it twice."),
            Mistake("bonus from the wrong row", _bonus_from_last_draft_row,
                    "Off by one: the bonus token comes from the target's distribution AFTER "
                    "the last draft, the last of the k + 1 rows of p, not the row that "
                    "judged the last draft."),
            Mistake("judged against the next row", _judged_against_next_row,
                    "Off by one: draft i is judged against row i of p (the distribution "
                    "before it, at the same position as q's row i), not row i + 1."),
            Mistake("a draw for every kept draft", _draws_every_token,
                    "Right in distribution, but you drew a token for every judged draft "
                    "(a one-hot draw still uses up random numbers), so the checker cannot "
                    "replay your draws: a kept draft is emitted as it is; draw only the "
                    "final token (the correction or the bonus)."),
            Mistake("all uniforms first", _uniforms_up_front,
                    "Right in distribution, but you drew all k uniforms before judging, so "
                    "the checker cannot replay your draws: draw each draft's uniform as you "
                    "judge it, and none for drafts after a rejection."),
        ],
    )
