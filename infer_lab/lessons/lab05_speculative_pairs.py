"""Lab 05: the first TWO tokens of speculative sampling, against the target's exact joint.

A one-token test (:mod:`.lab05_speculative_distribution`) never sees the bonus token nor
the second draft. Here one speculative call is replayed many times with the rows the real
target and draft give after the prompt and after each first token, and the pair of the
first two emitted tokens (t1, t2) is compared, by a chi-square test, with the exact
joint ``p(t1) p(t2 | t1)`` (Leviathan et al. 2023, Theorem 1: every emitted token has the
target's distribution given the tokens before it).

* k = 1: t2 is the bonus token when d1 is kept, so a bonus drawn from the wrong row fails;
* k = 2: t2 is the second draft, judged against the row after d1.

When the call ends after one token (a rejection at d1), t2 is what the next call would
start with, drawn from the target's row after t1 (its first token is the one-token
test's business). Rows are computed on demand, batched, and cached per first token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..model import Transformer
from .lab05_speculative_distribution import Probs, _probs_at, chi_square, pick_rule


class NextRows:
    """The target's and the draft's distributions after ``prompt + [t]``, per token t."""

    def __init__(self, target: Transformer, draft: Transformer, prompt: list[int],
                 temperature: float, probs: Probs = _probs_at, batch: int = 256):
        self.models, self.prompt, self.temperature = (target, draft), list(prompt), temperature
        self.probs, self.batch = probs, batch
        self.p: dict[int, torch.Tensor] = {}  # t -> (V,) target row after prompt + [t]
        self.q: dict[int, torch.Tensor] = {}  # t -> (V,) draft row

    @torch.inference_mode()
    def ensure(self, tokens: Iterable[int]) -> None:
        """Compute the rows of every token not yet cached, ``batch`` sequences per forward."""
        todo = sorted(set(tokens) - set(self.p))
        for i in range(0, len(todo), self.batch):
            chunk = todo[i:i + self.batch]
            for model, rows in zip(self.models, (self.p, self.q)):
                x = torch.tensor([self.prompt + [t] for t in chunk], device=model.device)
                logits = model(x)[:, -1].float()  # (m, V) the row after each first token
                for t, row in zip(chunk, self.probs(logits, self.temperature).cpu()):
                    rows[t] = row


@dataclass
class PairTest:
    """Counts of (t1, t2) from n replayed calls, and the chi-square against the joint."""

    k: int
    counts: Counter  # (t1, t2) -> draws
    pvalue: float
    n: int


def sample_first_pairs(rows: NextRows, p1: torch.Tensor, q1: torch.Tensor, n: int, k: int,
                       rule: Callable, seed: int = 0) -> Counter:
    """(t1, t2) counts over ``n`` calls with k = 1 or 2 drafts judged by ``rule``."""
    if k not in (1, 2):
        raise ValueError(f"k must be 1 or 2 (the first two tokens), got {k}")
    gen = torch.Generator().manual_seed(seed)
    firsts = torch.multinomial(q1, n, replacement=True, generator=gen).tolist()  # d1 ~ q1
    rows.ensure(firsts)
    pairs, ended = Counter(), []
    for d1 in firsts:
        p2, q2 = rows.p[d1], rows.q[d1]  # (V,) after d1
        if k == 1:
            draft, P, Q = [d1], torch.stack([p1, p2]), q1[None]  # (2, V), (1, V)
        else:
            d2 = int(torch.multinomial(q2, 1, generator=gen))
            # Row 3 (after d1 d2) only decides a third token: the row after d1 stands in.
            draft, P, Q = [d1, d2], torch.stack([p1, p2, p2]), torch.stack([q1, q2])
        n_kept, nxt = rule(P, Q, draft, False, gen)
        out = draft[:n_kept] + [nxt]
        if len(out) >= 2:
            pairs[out[0], out[1]] += 1
        else:
            ended.append(out[0])  # the next call starts after t1
    rows.ensure(ended)
    for t1 in ended:
        pairs[t1, int(torch.multinomial(rows.p[t1], 1, generator=gen))] += 1
    return pairs


def pair_pvalue(rows: NextRows, p1: torch.Tensor, pairs: Counter, min_expected: float = 5.0
                ) -> float:
    """Chi-square p-value of ``pairs`` against p(t1) p(t2 | t1); pairs expected fewer than
    ``min_expected`` times share one bin (whose expectation is the rest of the mass)."""
    n = sum(pairs.values())
    likely = [t for t in (p1 * n >= min_expected).nonzero().flatten().tolist()]
    rows.ensure(likely)
    keys, probs = [], []
    for t1 in likely:
        joint = p1[t1].double() * rows.p[t1].double()  # (V,) p(t1, t2) over t2
        for t2 in (joint * n >= min_expected).nonzero().flatten().tolist():
            keys.append((t1, t2))
            probs.append(float(joint[t2]))
    counts = [pairs.get(key, 0) for key in keys]
    rest_p, rest_n = max(0.0, 1.0 - sum(probs)), n - sum(counts)
    return chi_square(torch.tensor(counts + [rest_n]), torch.tensor(probs + [rest_p]),
                      min_expected)[2]


def compare_pairs(target: Transformer, draft: Transformer, prompt: list[int], n: int,
                  rules: dict[str, str | Callable], ks: tuple[int, ...] = (1, 2),
                  temperature: float = 1.0, probs: Probs = _probs_at, seed: int = 0
                  ) -> dict[str, list[PairTest]]:
    """For each named rule, one :class:`PairTest` per k (the same rows for every rule)."""
    rows = NextRows(target, draft, prompt, temperature, probs)
    with torch.inference_mode():
        x = torch.tensor([prompt], device=target.device)
        p1 = probs(target(x)[0, -1].float(), temperature).cpu()  # (V,)
        q1 = probs(draft(x)[0, -1].float(), temperature).cpu()
    out = {}
    for name, rule in rules.items():
        tests = []
        for k in ks:
            pairs = sample_first_pairs(rows, p1, q1, n, k, pick_rule(rule), seed)
            tests.append(PairTest(k, pairs, pair_pvalue(rows, p1, pairs), n))
        out[name] = tests
    return out
