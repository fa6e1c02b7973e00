"""Exercises of lab 00 (welcome): the decode loop, and the three numbers behind every
serving decision.

* greedy_decode (technique, :mod:`.welcome_decode`): the autoregressive loop itself,
  prefill once then one token per forward through the KV cache; the lab then generates
  and times with the learner's loop.
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
from .predictions import Prediction
from .welcome_decode import make_exercise

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
    make_exercise(LAB),
    Exercise(
        "decode_tokens_per_second", LAB, decode_tokens_per_second,
        fixed_cases=[Case((14e9, 1000.0)), Case((1e9, 100.0), {"batch": 8}),
                     Case((2e6, 3.35e3), {"batch": 1})],
        random_case=_random_bound_case,
        hint="At batch 1 decoding is a race between the bytes a step must read (all the "
             "weights, once) and the bytes memory can deliver per second. How many steps fit "
             "in a second, and how many tokens does one step yield when a batch of "
             "sequences shares its weight reads? Mind the unit: GB/s is 10^9 bytes per "
             "second.",
        code_hint="steps_per_second = bandwidth_gb_s * 1e9 / weight_bytes; "
                  "return batch * steps_per_second",
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
        "weight_bytes", LAB, weight_bytes,
        fixed_cases=[Case((7_000_000_000, 16)), Case((1000, 4)), Case((124_439_808, 32)),
                     Case((1, 8)), Case((0, 16))],
        random_case=_random_weight_case,
        hint="Memory is counted in bytes of 8 bits each, and formats narrower than a byte "
             "are packed, several weights to a byte, so a weight may take a fraction of a "
             "byte.",
        code_hint="return n_params * bits / 8  (int4: 4 / 8 = half a byte per weight)",
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
        "cost_per_million_tokens", LAB, cost_per_million_tokens,
        fixed_cases=[Case((2.0, 1000.0)), Case((0.0, 50.0)), Case((3.5, 35.2)),
                     Case((1.0, 1.0))],
        random_case=_random_cost_case,
        hint="Put the price and the speed in the same time unit (an hour has 3600 "
             "seconds), divide what an hour costs by what an hour produces, and scale the "
             "cost of one token to a million of them.",
        code_hint="tokens_per_hour = tokens_per_second * 3600; "
                  "return dollars_per_hour / tokens_per_hour * 1_000_000",
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

PREDICTIONS = [
    Prediction(
        "welcome_code_s_weight_mb", LAB,
        "How many MB (10^6 bytes) do code-s's weights take in memory, at the dtype it was "
        "loaded in (printed beside the prediction)? Its parameter count is printed in "
        "section 1. Passing: within 10%.",
        "MB", rel_tol=0.10,
        explain="bytes = parameters x bytes per parameter (4 in fp32, 2 in bf16/fp16); a "
                "tied embedding and output head is one tensor and counts once. Quantized "
                "formats (lab 02) add their scales to the bits of the codes."),
    Prediction(
        "welcome_decode_tokens_per_s", LAB,
        "From the bandwidth just probed and the model's weight bytes, predict the lab "
        "model's measured decode speed at batch 1, in tokens/s. Passing: within 50% of the "
        "measurement (the machine decides this one, hence the wide band).",
        "tokens/s", rel_tol=0.5,
        explain="The memory roofline, bandwidth / bytes read per step, is a ceiling, not a "
                "forecast. A model whose weights fit in the CPU's caches (code-m, 27 MB) is "
                "not limited by DRAM at all: each step pays fixed costs (Python, hundreds of "
                "small kernel launches) the roofline does not count, so it lands well below. "
                "A model that streams every weight from memory on every token "
                "(smollm2-135m, 540 MB) comes much closer to the bound."),
]
