"""Exercises of lab 08 (compiled runtimes and fused CPU paths). Each one builds a piece the
lab then runs: the predictions it draws against measurements, the profile picture, the
break-even widget.

* roofline_tokens_per_s: the speed limit of batch-1 decode for a weight format. Every step
  reads each matmul weight once, so ``tokens/s <= bandwidth / (params * bytes_per_weight)``
  (gpt-fast's "bytes per token" argument; lab 00's bound, per format).
* op_kind: classify a ``torch.profiler`` op name into the kinds of
  :mod:`infer_lab.runtimes.profile` (strip the namespace, two prefix rules for kernel
  families, then the name tables), which the lab uses to group a decode step's time.
* break_even_tokens: tokens to decode before a compile's cold start pays for itself,
  ``compile_seconds / (eager_s_per_token - compiled_s_per_token)``, infinite when compiling
  saves nothing (:func:`infer_lab.runtimes.compiled.break_even_tokens`).
"""

from __future__ import annotations

import math
import random

from ..runtimes.profile import OP_NAMES, op_kind  # the reference is the package's own
from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.RUNTIMES  # the notebook's name


# -- references -------------------------------------------------------------------------
def roofline_tokens_per_s(matmul_params: int, bytes_per_weight: float,
                          bandwidth_gb_s: float) -> float:
    """Upper bound on batch-1 decode tokens/s: one step reads ``matmul_params`` weights of
    ``bytes_per_weight`` bytes each (codes, scales and zeros included) at ``bandwidth_gb_s``
    GB/s (10^9 bytes per second)."""
    bytes_per_token = matmul_params * bytes_per_weight
    return bandwidth_gb_s * 1e9 / bytes_per_token


def break_even_tokens(compile_seconds: float, eager_s_per_token: float,
                      compiled_s_per_token: float) -> float:
    """Tokens after which compiling has paid for its cold start (inf: it never does)."""
    saved = eager_s_per_token - compiled_s_per_token
    return compile_seconds / saved if saved > 0 else math.inf


# -- cases ------------------------------------------------------------------------------
# Op names seen in profiles of our Transformer's decode step (eager fp32, packed int8/int4),
# and a few from other models and backends.
REAL_OPS = (
    "aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "aten::bmm",
    "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu",
    "aten::_weight_int4pack_mm", "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention", "aten::_softmax", "aten::softmax",
    "aten::rsqrt", "aten::pow", "aten::mean", "aten::layer_norm", "aten::native_layer_norm",
    "aten::cos", "aten::sin", "aten::mul", "aten::add", "aten::div_", "aten::neg",
    "aten::silu", "aten::gelu", "aten::where", "aten::lt", "aten::__rshift__",
    "aten::bitwise_and", "aten::copy_", "aten::_to_copy", "aten::to", "aten::cat",
    "aten::clone", "aten::index_put_", "aten::_index_put_impl_", "aten::index",
    "aten::repeat_interleave", "aten::fill_", "aten::view", "aten::reshape",
    "aten::as_strided", "aten::slice", "aten::select", "aten::transpose", "aten::unsqueeze",
    "aten::empty", "aten::empty_strided", "aten::split_with_sizes", "aten::chunk",
    "aten::embedding", "aten::argmax", "aten::item", "aten::_local_scalar_dense",
    "aten::arange", "aten::is_nonzero", "aten::any", "my_extension::fused_gemv",
    "ProfilerStep#3")
_POOL = sorted({f"aten::{n}" for names in OP_NAMES.values() for n in names} | set(REAL_OPS))


def _random_roofline(rng: random.Random) -> Case:
    params = int(10 ** rng.uniform(6, 10.5))  # 1M to 30B matmul weights
    bpw = rng.choice([4.0, 2.0, 1.0, 1.0078, 0.5625, 0.5, 0.717, 0.25])
    return Case((params, bpw, rng.uniform(5, 5000)))


def _random_op(rng: random.Random) -> Case:
    return Case((rng.choice(_POOL),))


def _random_break_even(rng: random.Random) -> Case:
    eager = 10 ** rng.uniform(-3.5, -1)  # 0.3 ms to 100 ms per token
    compiled = eager * rng.uniform(0.3, 1.2)  # sometimes slower than eager
    return Case((rng.uniform(1, 200), eager, compiled))


def _keep_namespace(name: str) -> str:
    for kind, names in OP_NAMES.items():
        if name in names:
            return kind
    return "other"


def _no_prefix_rules(name: str) -> str:
    short = name.rsplit("::", 1)[-1]
    return next((k for k, names in OP_NAMES.items() if short in names), "other")


def _packed_as_other(name: str) -> str:
    return "other" if "pack" in name else op_kind(name)


EXERCISES = [
    Exercise(
        "roofline_tokens_per_s", LAB, roofline_tokens_per_s,
        fixed_cases=[Case((7_000_000, 4.0, 20.0)), Case((134_515_008, 0.5625, 30.0)),
                     Case((1_000_000_000, 2.0, 1000.0)), Case((85_000_000, 1.0078, 32.5))],
        random_case=_random_roofline, rtol=1e-6,
        hint="A step reads every matmul weight once: bytes per token = matmul_params * "
             "bytes_per_weight. bandwidth_gb_s * 1e9 bytes move per second; tokens/s is "
             "their ratio.",
        mistakes=[
            Mistake("bits, not bytes", lambda p, b, bw: bw * 1e9 / (p * b * 8),
                    "bytes_per_weight is already in bytes (int4 with its scales is about "
                    "0.56): do not multiply by 8."),
            Mistake("GB not converted", lambda p, b, bw: bw / (p * b),
                    "bandwidth_gb_s is in GB/s: multiply by 1e9 to get bytes/s."),
            Mistake("inverted", lambda p, b, bw: p * b / (bw * 1e9),
                    "That is seconds per token; tokens/s is its inverse."),
            Mistake("bytes per weight ignored", lambda p, b, bw: bw * 1e9 / p,
                    "Fewer bytes per weight is the whole point of quantizing: divide by "
                    "matmul_params * bytes_per_weight, not by matmul_params."),
        ]),
    Exercise(
        "op_kind", LAB, op_kind,
        fixed_cases=[Case((n,)) for n in REAL_OPS],
        random_case=_random_op, n_random=40,
        hint="Drop the namespace first (op_name.rsplit('::', 1)[-1]); names starting with "
             "'_scaled_dot_product' are attention kernels and names starting with "
             "'_weight_int4pack_mm' are matmuls; then return the kind whose OP_NAMES set "
             "holds the name, and 'other' when none does.",
        mistakes=[
            # Checked in this order: the first whose answer equals yours names the hint.
            Mistake("no prefix rules", _no_prefix_rules,
                    "SDPA dispatches to a kernel per backend "
                    "('_scaled_dot_product_flash_attention_for_cpu', '..._efficient_...'): "
                    "any name starting with '_scaled_dot_product' is attention, and any "
                    "starting with '_weight_int4pack_mm' is a matmul."),
            Mistake("packed kernels as other", _packed_as_other,
                    "The packed int8/int4 kernels are the quantized model's matmuls: they "
                    "read the weight codes, and they must count as 'matmul'."),
            Mistake("namespace kept", _keep_namespace,
                    "Profiler names carry a namespace ('aten::addmm'), the tables do not: "
                    "look up op_name.rsplit('::', 1)[-1]."),
        ]),
    Exercise(
        "break_even_tokens", LAB, break_even_tokens,
        fixed_cases=[Case((43.1, 7.13e-3, 5.84e-3)), Case((6.0, 0.01, 0.005)),
                     Case((10.0, 0.004, 0.004)), Case((10.0, 0.004, 0.005)),
                     Case((0.0, 0.01, 0.002))],
        random_case=_random_break_even,
        hint="Each token saves (eager - compiled) seconds; the compile is repaid after "
             "compile_seconds / saved tokens. When compiled is not faster (saved <= 0), it "
             "is never repaid: return math.inf.",
        mistakes=[
            Mistake("never infinite",
                    lambda c, e, k: c / (e - k) if e != k else math.inf,
                    "When the compiled step is slower, the saving is negative and so is your "
                    "answer: a compile that saves nothing is never repaid, math.inf."),
            Mistake("compiled time, not the saving", lambda c, e, k: c / k,
                    "That counts tokens the compile's time could decode; divide by the time "
                    "each token *saves*, eager_s_per_token - compiled_s_per_token."),
            Mistake("saving reversed",
                    lambda c, e, k: c / (k - e) if k - e > 0 else math.inf,
                    "The saving is eager minus compiled: positive when compiling helps."),
        ]),
]
