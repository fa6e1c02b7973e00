"""What a speculative decode did: proposals, accepts, alpha, and the speedup formula.

Expected tokens per target call, with per-token acceptance alpha and k draft tokens:
(1 - alpha^(k+1)) / (1 - alpha); with a draft costing c target-steps per token the
speedup is (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1)) (Leviathan et al. 2023, eq. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecStats:
    """What one speculative_decode call did."""

    target_calls: int = 0
    proposed: int = 0
    accepted: int = 0
    rejected: int = 0  # target calls that rejected a draft token (the others took all)
    accepted_at: list[int] = field(default_factory=list)  # accepts by draft position
    proposed_at: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0
    target_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over proposed draft tokens (falls with k: tokens after a rejection
        count as proposed but never get a chance)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability, the alpha of the speedup formula.

        Each draft token is judged only if all before it were accepted; with independent
        accepts of probability alpha the maximum-likelihood estimate is
        accepted / (accepted + rejections). Unlike :attr:`acceptance_rate` it does not
        depend on k, so it can be compared across k and plugged into
        :func:`theoretical_speedup`.
        """
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """Mean accepted draft tokens + 1 (the corrected or bonus token) per target call."""
        return (self.accepted + self.target_calls) / self.target_calls if self.target_calls else 0.0

    def acceptance_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at, self.proposed_at)]

    def add(self, other: SpecStats) -> SpecStats:
        """Add another call's counts and times into this one (e.g. over prompts)."""
        for f in ("target_calls", "proposed", "accepted", "rejected", "draft_seconds",
                  "target_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for i, (a, n) in enumerate(zip(other.accepted_at, other.proposed_at)):
            if i == len(self.proposed_at):
                self.accepted_at.append(0)
                self.proposed_at.append(0)
            self.accepted_at[i] += a
            self.proposed_at[i] += n
        return self

    def record(self, n_proposed: int, n_accepted: int) -> None:
        self.target_calls += 1
        self.proposed += n_proposed
        self.accepted += n_accepted
        self.rejected += int(n_accepted < n_proposed)
        while len(self.proposed_at) < n_proposed:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for i in range(n_proposed):
            self.proposed_at[i] += 1
            self.accepted_at[i] += int(i < n_accepted)


def theoretical_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. eq. 1: expected speedup for acceptance rate alpha and cost ratio c."""
    if alpha >= 1.0:
        return (k + 1) / (k * c + 1)
    return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))
