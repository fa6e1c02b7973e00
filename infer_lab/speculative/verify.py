"""The acceptance rule: which draft tokens the target keeps, and the token after them.

Rejection sampling (Leviathan et al. 2023; Chen et al. 2023): accept d_i with
probability min(1, p(d_i) / q(d_i)); at the first rejection draw from
norm(max(0, p - q)); when all are accepted draw a bonus token from p_{k+1}. The result
is distributed exactly as the target. Greedy: the longest prefix that agrees with the
target's argmax, then the argmax after it.
"""

from __future__ import annotations

import torch

from ..generate import draw


def verify(p: torch.Tensor, q: torch.Tensor | None, draft: list[int], greedy: bool,
           gen: torch.Generator | None) -> tuple[int, int]:
    """Accept a prefix of ``draft``; return (n accepted, the next token).

    p: (n+1, V) target probabilities at each draft position and one past it.
    q: (n, V) draft probabilities, or None for a deterministic (one-hot) proposal.
    """
    if greedy:  # one greedy rule: the longest prefix that agrees with the argmax
        return verify_greedy(p.argmax(-1).tolist(), draft)
    for i, d in enumerate(draft):
        q_d = 1.0 if q is None else float(q[i, d])
        if torch.rand((), generator=gen).item() < min(1.0, float(p[i, d]) / q_d):
            continue
        q_i = torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).to(p) if q is None else q[i]
        residual = (p[i] - q_i).clamp(min=0)
        residual = residual / residual.sum()
        return i, int(draw(residual[None], gen))
    return len(draft), int(draw(p[len(draft)][None], gen))  # the bonus token


def verify_greedy(choices: list[int], draft: list[int]) -> tuple[int, int]:
    """Greedy verification: ``choices`` are the target's argmax at each draft position
    and one past it (n+1); accept the longest prefix of ``draft`` that agrees."""
    n = 0
    while n < len(draft) and draft[n] == choices[n]:
        n += 1
    return n, choices[n]
