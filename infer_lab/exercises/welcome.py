"""Exercises of lab 00 (welcome): the three numbers behind every serving decision.

* weight_bytes: memory of a model's weights at a given precision,
  ``bytes = n_params * bits / 8``.
* decode_tokens_per_second: the memory-bandwidth limit of decoding. Each decode step
  reads every weight once, for the whole batch, so
  ``tokens/s <= batch * bandwidth / weight_bytes``.
* cost_per_million_tokens: ``$ / 1M tokens = ($/hour) / (tokens/s * 3600) * 10^6``.
"""

from __future__ import annotations

import math
import random

from ..config import PRESETS
from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.WELCOME  # the notebook's name


# -- references -------------------------------------------------------------------------
def weight_bytes(n_params: int, bits: float) -> float:
    """Bytes needed to store ``n_params`` weights of ``bits`` bits each."""
    return n_params * bits / 8


def decode_tokens_per_second(weight_bytes: float, bandwidth_gb_s: float,
                             batch: int = 1) -> float:
    """Upper bound on output tokens/s when every step must read all weights once.

    bandwidth_gb_s is in GB/s (10^9 bytes per second). A step produces one token for
    each of the ``batch`` sequences, and reads the weights once for all of them.
    """
    steps_per_second = bandwidth_gb_s * 1e9 / weight_bytes
    return batch * steps_per_second


def cost_per_million_tokens(dollars_per_hour: float, tokens_per_second: float) -> float:
    """Dollars per one million output tokens of a machine rented by the hour."""
    tokens_per_hour = tokens_per_second * 3600
    return dollars_per_hour / tokens_per_hour * 1_000_000


# -- cases ------------------------------------------------------------------------------
def _random_weight_case(rng: random.Random) -> Case:
    cfg = PRESETS[rng.choice(sorted(PRESETS))]
    return Case((cfg.n_params, rng.choice([32, 16, 8, 4, 4.5, 6.5625])))


def _random_bound_case(rng: random.Random) -> Case:
    wbytes = 10 ** rng.uniform(6, 11)  # 1 MB to 100 GB of weights
    return Case((wbytes, rng.uniform(20, 5000)), {"batch": rng.randint(1, 64)})


def _random_cost_case(rng: random.Random) -> Case:
    return Case((round(rng.uniform(0.1, 12), 2), 10 ** rng.uniform(0, 5)))


EXERCISES = [
    Exercise(
        "weight_bytes", LAB, weight_bytes,
        fixed_cases=[Case((7_000_000_000, 16)), Case((1000, 4)), Case((124_439_808, 32)),
                     Case((1, 8)), Case((0, 16))],
        random_case=_random_weight_case,
        hint="A weight of b bits takes b / 8 bytes; int4 packs two weights in one byte.",
        mistakes=[
            Mistake("bits as bytes", lambda n, bits: n * bits,
                    "bits is in bits: divide by 8 to get bytes."),
            Mistake("one byte minimum", lambda n, bits: n * max(1, bits // 8),
                    "Sub-byte formats are packed: an int4 weight takes half a byte."),
            Mistake("always fp32", lambda n, bits: n * 4,
                    "Use the bits you are given, not the 4 bytes of fp32."),
        ],
    ),
    Exercise(
        "decode_tokens_per_second", LAB, decode_tokens_per_second,
        fixed_cases=[Case((14e9, 1000.0)), Case((1e9, 100.0), {"batch": 8}),
                     Case((2e6, 3.35e3), {"batch": 1})],
        random_case=_random_bound_case,
        hint="One step reads weight_bytes bytes and yields one token per sequence in the "
             "batch; bandwidth_gb_s * 1e9 bytes can be read per second.",
        mistakes=[
            Mistake("GB not converted", lambda w, bw, batch=1: batch * bw / w,
                    "bandwidth_gb_s is in GB/s: multiply by 1e9 to get bytes/s."),
            Mistake("batch ignored", lambda w, bw, batch=1: bw * 1e9 / w,
                    "The weights are read once per step for the whole batch, so a step "
                    "yields `batch` tokens."),
            Mistake("batch divides", lambda w, bw, batch=1: bw * 1e9 / w / batch,
                    "Batching shares the weight reads: it multiplies tokens/s, not divides."),
            Mistake("inverted", lambda w, bw, batch=1: batch * w / (bw * 1e9),
                    "That is seconds per step; tokens/s is its inverse."),
        ],
    ),
    Exercise(
        "cost_per_million_tokens", LAB, cost_per_million_tokens,
        fixed_cases=[Case((2.0, 1000.0)), Case((0.0, 50.0)), Case((3.5, 35.2)),
                     Case((1.0, 1.0))],
        random_case=_random_cost_case,
        hint="Tokens per hour = tokens/s * 3600; cost per token = ($/hour) / "
             "(tokens per hour); then scale to 1,000,000 tokens.",
        mistakes=[
            Mistake("seconds vs hours", lambda d, tps: d / tps * 1e6,
                    "The price is per hour but the speed is per second: multiply "
                    "tokens/s by 3600."),
            Mistake("per thousand", lambda d, tps: d / (tps * 3600) * 1e3,
                    "1M tokens is 1,000,000 tokens, not 1,000."),
            Mistake("tokens per dollar", lambda d, tps: tps * 3600 / d / 1e6 if d else math.inf,
                    "That is (millions of) tokens per dollar; invert it."),
        ],
    ),
]
