"""Exercises of lab 09 (the application layer). Each builds a piece the lab then runs.

* token_mask (technique): the allowed-token mask of one DFA state, token t allowed iff the
  DFA survives every character of text(t) from that state, ``delta*(q, text(t))`` defined
  (Willard & Louf 2023; :class:`infer_lab.app.token_mask.TokenMasks` without the budget
  and EOS, which the lab adds). The lab then decodes JSON with the learner's masks.
* cascade_expected_cost: a cascade always pays the small model and pays the large one on
  the escalated share, ``c_small + P(escalate) * c_large`` (FrugalGPT;
  :func:`infer_lab.app.cascade.cascade_curve` computes the same per threshold).
* token_bucket (technique): ``token_bucket(rate, burst)`` returns a bucket's
  ``take(now, cost) -> (ok, retry_after)`` (:mod:`infer_lab.app.rate_limit`), graded by
  replaying request sequences through it; the lab then runs it on a burst of requests.
"""

from __future__ import annotations

import copy
import math
import random
import string

from ..app.regex_fsm import compile_regex
from . import catalog
from .checker import Case, Exercise, Mistake
from .predictions import Prediction

LAB = catalog.APPLICATIONS  # the notebook's name


# -- references -------------------------------------------------------------------------
def token_mask(dfa, texts: list[str | None], state: int) -> list[bool]:
    """allowed[i]: token i's text takes ``dfa`` from ``state`` through every character
    without dying (None texts, special tokens, are never allowed)."""
    allowed = []
    for text in texts:
        q = state
        for ch in text or "":
            q = dfa.step(q, ch)  # None: no accepted string continues this way
            if q is None:
                break
        allowed.append(text is not None and q is not None)
    return allowed


def cascade_expected_cost(cost_small: float, cost_large: float,
                          escalation_rate: float) -> float:
    """Expected cost per request of a small -> large cascade: the small model always runs,
    the large one on the escalated share."""
    return cost_small + escalation_rate * cost_large


def token_bucket(rate: float, burst: float):
    """A bucket of at most ``burst`` tokens, refilled at ``rate`` per second, full at time
    0. Returns its ``take(now, cost) -> (ok, retry_after)``: (True, 0.0) and ``cost``
    charged if the bucket holds it; else (False, seconds until it will) and nothing charged;
    (False, inf) if it never can."""
    level, last = burst, 0.0

    def take(now: float, cost: float) -> tuple[bool, float]:
        nonlocal level, last
        if cost > burst:
            return False, math.inf
        if now > last:  # refill, capped at the burst; a clock stepping back adds nothing
            level = min(burst, level + (now - last) * rate)
            last = now
        if level + 1e-9 >= cost:
            level -= cost
            return True, 0.0
        return False, (cost - level) / rate

    return take


def replay(make_bucket, rate: float, burst: float,
           requests: list[tuple[float, float]]) -> list[tuple[bool, float]]:
    """Each (time, cost) request through one new ``make_bucket(rate, burst)``, in order."""
    take = make_bucket(rate, burst)
    out = []
    for now, cost in requests:
        ok, retry = take(now, cost)
        out.append((bool(ok), float(retry)))
    return out


# -- token_mask: cases and mistakes -------------------------------------------------------
PATTERNS = (r'\{"a": [0-9]+\}', r"(true|false)", r"[a-z]+(_[a-z]+)*\(\)", r"-?[0-9]+(\.[0-9]+)?",
            r'"[a-z ]{0,6}"', r"(cat|car|cart)s?")
TEXTS = ('{"', '{', '"a"', '": ', ": ", "1", "23", "4}", "}", "tr", "true", "fa", "lse", "t",
         "ca", "car", "rt", "s", "ts", "a", "ab", "_b", "()", "(", ")", "-", "-1", ".", ".5",
         "0.", " ", "x", "Z", "", None, '"', 'ab"', '" a')


def _dfa_states(dfa, limit: int = 6) -> list[int]:
    return list(dfa.states)[:limit]


def _token_cases() -> list[Case]:
    cases = []
    for k, p in enumerate(PATTERNS):
        dfa = compile_regex(p)
        for q in _dfa_states(dfa, 3 if k else 6):
            cases.append(Case((dfa, list(TEXTS), q)))
    return cases


def _random_token_case(rng: random.Random) -> Case:
    dfa = compile_regex(rng.choice(PATTERNS))
    alphabet = string.ascii_lowercase[:6] + '{}":_ ()-.0123456789'
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
             for _ in range(rng.randint(5, 30))] + list(rng.sample(TEXTS, 8))
    return Case((dfa, texts, rng.choice(list(dfa.states))))


def _first_char_only(dfa, texts, state):
    return [t is not None and (t == "" or dfa.step(state, t[0]) is not None) for t in texts]


def _from_start(dfa, texts, state):
    return token_mask(dfa, texts, dfa.start)


def _must_accept(dfa, texts, state):
    out = []
    for t, ok in zip(texts, token_mask(dfa, texts, state)):
        q = dfa.walk(t, state) if ok else None
        out.append(q is not None and dfa.is_accepting(q))
    return out


def _none_as_empty(dfa, texts, state):
    return token_mask(dfa, [t or "" for t in texts], state)


# -- token_bucket: a class graded by replaying requests --------------------------------------
class ReplayExercise(Exercise):
    """Grades a bucket maker: every case is ``replay(fn, rate, burst, requests)``, and two answers
    agree when every decision does (retry times within 1e-6 s)."""

    noun = "bucket"

    def _call(self, fn, case: Case):
        return replay(fn, *copy.deepcopy(case.args))

    def mismatch(self, case: Case, got) -> str | None:
        want = self._call(self.reference, case)
        for i, ((ok, r), (wok, wr)) in enumerate(zip(got, want)):
            same = ok == wok and (r == wr or math.isclose(r, wr, rel_tol=1e-6, abs_tol=1e-6))
            if not same:
                now, cost = case.args[2][i]
                return (f"request {i + 1} (time {now:g} s, cost {cost:g}): expected "
                        f"take() -> ({wok}, {wr:.6g}), got ({ok}, {r:.6g})")
        return None

    def diagnose(self, case: Case, got) -> str | None:
        for m in self.mistakes:
            try:
                saved, self.reference = self.reference, m.fn
                same = self.mismatch(case, got) is None
            except Exception:  # noqa: BLE001  a mistake that cannot run is no match
                same = False
            finally:
                self.reference = saved
            if same:
                return m.hint
        return None


def _bucket_case(rng: random.Random) -> Case:
    rate, burst = rng.choice([0.5, 1.0, 2.0, 5.0, 12.5]), float(rng.choice([1, 3, 5, 10]))
    t, reqs = 0.0, []
    for _ in range(rng.randint(5, 40)):
        t += rng.choice([0.0, 0.0, 0.01, 0.1, 0.5, 2.0, 10.0])  # bursts and gaps
        cost = rng.choice([1.0, 1.0, 1.0, 2.0, 0.5, burst, burst + 1])
        reqs.append((round(t, 3), cost))
    return Case((rate, burst, reqs))


def _variant(cap=True, charge_refused=False, retry="seconds", never=True, full=True):
    """A wrong bucket: the reference with one rule changed."""
    def make(rate, burst):
        state = {"level": burst if full else 0.0, "last": 0.0}

        def take(now, cost):
            if cost > burst and never:
                return False, math.inf
            if now > state["last"]:
                grown = state["level"] + (now - state["last"]) * rate
                state["level"], state["last"] = min(burst, grown) if cap else grown, now
            if state["level"] + 1e-9 >= cost:
                state["level"] -= cost
                return True, 0.0
            missing = cost - state["level"]
            if charge_refused:
                state["level"] -= cost
            return False, {"seconds": missing / rate, "tokens": missing,
                           "whole": cost / rate}[retry]
        return take
    return make


BURST = [(0.0, 1.0)] * 6 + [(0.5, 1.0), (1.0, 1.0), (1.2, 2.0), (3.0, 1.0), (3.0, 9.0)]

EXERCISES = [
    Exercise(
        "token_mask", LAB, token_mask,
        fixed_cases=_token_cases(), random_case=_random_token_case, n_random=20,
        kind="technique",
        hint="A token is a string of characters, and the automaton reads characters: start "
             "at the given state and feed it the token's characters one by one. The token "
             "is allowed when the automaton survives all of them (dfa.step returns None the "
             "moment no accepted text can continue). It need not end in an accepting state: "
             "the answer may go on. A token whose text is None is never allowed.",
        code_hint="for each text: q = state; for ch in text: q = dfa.step(q, ch); stop at "
                  "None; allowed.append(text is not None and q is not None)",
        mistakes=[
            Mistake("first character only", _first_char_only,
                    "Checking the first character is not enough: '{\"b' starts like '{\"a' "
                    "but dies on its last character. Walk every character of the token."),
            Mistake("from the start state", _from_start,
                    "The mask is for the state decoding is in now, not the start: walk from "
                    "`state`, not from dfa.start."),
            Mistake("must reach acceptance", _must_accept,
                    "A token may leave the automaton mid-answer: '{\"' is a fine first token "
                    "although '{\"' is not yet valid JSON. Require survival, not acceptance."),
            Mistake("None as empty", _none_as_empty,
                    "A None text is a special token (EOS, <|im_end|>): it is not text, so a "
                    "constraint must never pick it here. An empty walk would allow it."),
        ]),
    Exercise(
        "cascade_expected_cost", LAB, cascade_expected_cost,
        fixed_cases=[Case((0.25, 1.0, 0.3)), Case((0.2, 1.0, 0.0)), Case((0.2, 1.0, 1.0)),
                     Case((0.4, 3.0, 0.5)), Case((0.0, 1.0, 0.7))],
        random_case=lambda rng: Case((rng.uniform(0.01, 2), rng.uniform(0.5, 20),
                                      rng.random())),
        hint="Every request goes to the small model first, so its cost is paid on every "
             "request; only the escalated share of requests also pays the large model.",
        code_hint="return cost_small + escalation_rate * cost_large",
        mistakes=[
            Mistake("a router, not a cascade", lambda s, lg, r: (1 - r) * s + r * lg,
                    "That is a router's cost (one model per request). A cascade has already "
                    "paid the small model when it decides to escalate."),
            Mistake("both always paid", lambda s, lg, r: s + lg,
                    "The large model runs only on the escalated requests: weight its cost by "
                    "the escalation rate."),
            Mistake("escalation rate reversed", lambda s, lg, r: s + (1 - r) * lg,
                    "escalation_rate is the share that *reaches* the large model."),
        ]),
    ReplayExercise(
        "token_bucket", LAB, token_bucket,
        fixed_cases=[Case((2.0, 5.0, BURST)), Case((1.0, 1.0, [(0.0, 1.0), (0.0, 1.0),
                                                               (0.4, 1.0), (1.0, 1.0)])),
                     Case((0.5, 3.0, [(0.0, 3.0), (100.0, 2.0), (100.0, 2.0), (100.0, 4.0)])),
                     Case((10.0, 10.0, [(5.0, 1.0)] * 12 + [(4.0, 1.0), (5.05, 1.0)]))],
        random_case=_bucket_case, n_random=30, kind="technique",
        hint="Before deciding, bring the bucket up to date: it gains rate tokens per second "
             "since the last call, but never holds more than burst. A request passes if the "
             "level covers its cost (then take the cost); a refused request takes nothing "
             "and must wait until the missing tokens have dripped in. A cost above burst can "
             "never pass: say so with an infinite wait.",
        code_hint="inside take (nonlocal level, last): if cost > burst: return False, "
                  "math.inf; if now > last: level = min(burst, level + (now - last) * rate); "
                  "last = now; if level >= cost: level -= cost; return True, 0.0; return "
                  "False, (cost - level) / rate",
        mistakes=[
            Mistake("refill not capped", _variant(cap=False),
                    "A bucket that was idle for an hour must not let a client send an hour's "
                    "worth at once: the level is capped at burst."),
            Mistake("refusals charged", _variant(charge_refused=True),
                    "A refused request did not run: it must cost nothing, or a client that "
                    "retries too early digs itself deeper."),
            Mistake("retry in tokens", _variant(retry="tokens"),
                    "retry_after is in seconds: the missing tokens divided by the rate."),
            Mistake("retry for the whole cost", _variant(retry="whole"),
                    "Only the missing tokens need to drip in: cost minus the current level, "
                    "not the whole cost."),
            Mistake("waits for the impossible", _variant(never=False),
                    "A cost above burst never fits, however long the client waits: return an "
                    "infinite retry_after (math.inf), not a wait that is a lie."),
            Mistake("starts empty", _variant(full=False),
                    "A new key starts with a full bucket: its burst is available at once."),
        ]),
]

PREDICTIONS = [
    Prediction(
        "app_prompt_cache_ttft", LAB,
        "Requests share a long system prompt; with prefix caching the engine prefills only "
        "each request's own few tokens. What will the cached requests' time to first token "
        "be, as a fraction of the uncached ones'? Within 50%.",
        "x (TTFT cached / uncached)", rel_tol=0.5,
        explain="The prefill shrinks to the uncached tail, but a request still pays one "
                "forward, the scheduler and the engine's bookkeeping; on a small model those "
                "fixed costs are much of the TTFT, so the ratio stays well above the share "
                "of tokens not cached."),
    Prediction(
        "app_bucket_admitted", LAB,
        "A bucket of burst 5 refilling at 2 tokens/s; one client sends 20 requests of cost "
        "1 at once at t = 0, then 20 more evenly over the next 5 seconds (one every 0.25 "
        "s). How many of the 40 are admitted? Within 2.",
        "requests", abs_tol=2,
        explain="The burst admits 5 at t = 0; after that the bucket refills 2 tokens/s, so "
                "the next 5 seconds admit about 2 x 5 = 10 more, whatever the client sends: "
                "burst + rate x T, about 15."),
]
