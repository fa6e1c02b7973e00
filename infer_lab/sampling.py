"""How to pick the next token, as plain data: no torch, so a request can carry it anywhere.

    greedy       temperature 0: argmax
    temperature  p ~ softmax(z / T)
    top_k        keep the k most likely tokens
    top_p        nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens
                 whose probability mass reaches p
    seed         a per-request random stream, so a sampled answer can be reproduced

Temperatures in (0, MIN_TEMPERATURE) are treated as greedy, and say so in ``greedy``:
z / T for such a T overflows float32 for ordinary logits (|z| ~ 10 and T < 1e-37 gives
inf, and softmax of inf is NaN), and softmax(z / T) is one-hot on the argmax long before
that (T = 1e-5 already puts all but e^-1000 of the mass on a logit gap of 0.01). So the
limit T -> 0 is argmax, which is what greedy computes exactly.

The tensor side (temperature scaling, filtering, drawing) is in :mod:`infer_lab.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validate import integer, number

MIN_TEMPERATURE = 1e-5
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds; JSON ints are unbounded


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token. temperature=0 (or below MIN_TEMPERATURE) is greedy."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # frozen: the validated (normalised) values are written past __setattr__ once.
        set_ = object.__setattr__
        set_(self, "temperature", number("temperature", self.temperature, lo=0))
        if self.top_k is not None:
            set_(self, "top_k", integer("top_k", self.top_k, lo=1))
        if self.top_p is not None:
            set_(self, "top_p", number("top_p", self.top_p, lo=0, hi=1, lo_open=True))
        if self.seed is not None:
            set_(self, "seed", integer("seed", self.seed, lo=0, hi=MAX_SEED))

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0, or one too small to divide logits by."""
        return self.temperature < MIN_TEMPERATURE


GREEDY = Sampling()
