"""Exercises of lab 08 (compiled runtimes and fused CPU paths). Each one builds a piece the
lab then runs: the predictions it draws against measurements, the compiled decoder, the
profile picture, the break-even widget.

* gemv_reduction (technique, :mod:`.runtimes_gemv`): the batch-1 linear as a
  multiply-and-sum, which the lab then compiles into its decode step.
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
from .predictions import Prediction
from .runtimes_gemv import GEMV_REDUCTION, gemv_reduction  # noqa: F401  (re-exported)

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


# Tier 1 (``hint``): the idea, never the code; tier 3 (``code_hint``): the code, shown after
# CODE_HINT_AFTER failed checks. Ordered as the lab presents them.
EXERCISES = [
    Exercise(
        "roofline_tokens_per_s", LAB, roofline_tokens_per_s,
        fixed_cases=[Case((7_000_000, 4.0, 20.0)), Case((134_515_008, 0.5625, 30.0)),
                     Case((1_000_000_000, 2.0, 1000.0)), Case((85_000_000, 1.0078, 32.5))],
        random_case=_random_roofline, rtol=1e-6,
        hint="A batch-1 step reads every matmul weight once, so the bytes it needs per token "
             "are the weight count times the bytes of one weight. Memory delivers "
             "bandwidth_gb_s billion bytes each second; tokens per second is bytes per second "
             "over bytes per token.",
        code_hint="return bandwidth_gb_s * 1e9 / (matmul_params * bytes_per_weight)",
        mistakes=[
            Mistake("bits, not bytes", lambda p, b, bw: bw * 1e9 / (p * b * 8),
                    "bytes_per_weight is already in bytes (int4 with its scales is about "
                    "0.56): there is no factor of 8 to apply."),
            Mistake("GB not converted", lambda p, b, bw: bw / (p * b),
                    "bandwidth_gb_s is in GB/s: convert it to bytes per second (10^9 bytes "
                    "in a GB) before dividing."),
            Mistake("inverted", lambda p, b, bw: p * b / (bw * 1e9),
                    "That is seconds per token; tokens/s is its inverse."),
            Mistake("bytes per weight ignored", lambda p, b, bw: bw * 1e9 / p,
                    "Fewer bytes per weight is the whole point of quantizing: the bytes per "
                    "token are the weight count times the bytes of each weight."),
        ]),
    GEMV_REDUCTION,
    Exercise(
        "break_even_tokens", LAB, break_even_tokens,
        fixed_cases=[Case((43.1, 7.13e-3, 5.84e-3)), Case((6.0, 0.01, 0.005)),
                     Case((10.0, 0.004, 0.004)), Case((10.0, 0.004, 0.005)),
                     Case((0.0, 0.01, 0.002))],
        random_case=_random_break_even,
        hint="Each token saves the difference between the eager and the compiled time per "
             "token; the compile is repaid once those savings add up to its cold start. "
             "When compiling saves nothing per token, or costs time, it is never repaid: "
             "the answer is infinite (math.inf).",
        code_hint="saved = eager_s_per_token - compiled_s_per_token; "
                  "return compile_seconds / saved if saved > 0 else math.inf",
        mistakes=[
            Mistake("never infinite",
                    lambda c, e, k: c / (e - k) if e != k else math.inf,
                    "When the compiled step is slower, the saving is negative and so is your "
                    "answer: a compile that saves nothing is never repaid, math.inf."),
            Mistake("compiled time, not the saving", lambda c, e, k: c / k,
                    "That counts tokens the compile's time could decode; divide by the time "
                    "each token *saves*, eager minus compiled."),
            Mistake("saving reversed",
                    lambda c, e, k: c / (k - e) if k - e > 0 else math.inf,
                    "The saving is eager minus compiled: positive when compiling helps."),
        ]),
    Exercise(
        "op_kind", LAB, op_kind,
        fixed_cases=[Case((n,)) for n in REAL_OPS],
        random_case=_random_op, n_random=40,
        hint="Drop the namespace (everything up to the last double colon) first. Two kernel "
             "families carry a suffix per backend: names starting with _scaled_dot_product "
             "are attention, names starting with _weight_int4pack_mm are matmuls. Otherwise "
             "the kind is the one whose OP_NAMES set holds the name, and 'other' when none "
             "does.",
        code_hint="name = op_name.rsplit('::', 1)[-1]; if name.startswith('_scaled_dot_product'"
                  "): return 'attention'; if name.startswith('_weight_int4pack_mm'): return "
                  "'matmul'; return next((k for k, names in OP_NAMES.items() if name in names), "
                  "'other')",
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
                    "drop everything up to the last '::' before looking the name up."),
        ]),
]

PREDICTIONS = [
    Prediction(
        "runtimes_int4_speedup", LAB,
        "The fused int4 model reads about 1/7 of fp32's weight bytes per token. How many "
        "times eager fp32's tokens/s will it decode, on the lab's model, here? Within 50%.",
        "x (int4 tokens/s / fp32 tokens/s)", rel_tol=0.5,
        explain="The bytes ratio is a bound for a model whose weights stream from memory. "
                "The zoo models fit in the CPU's cache, so their decode is bound by overhead "
                "(hundreds of small ops launched from Python), not bytes: int4 gains far "
                "less than 7x. On SmolLM2 (540 MB, laptop scale) the gain approaches the "
                "ratio of bytes."),
    Prediction(
        "runtimes_compiled_speedup", LAB,
        "The decode step compiled with your gemv_reduction in every linear (one graph over "
        "a static KV cache, inductor's C++): how many times eager fp32's tokens/s will it "
        "decode the lab's model? Within 50%.",
        "x (compiled tokens/s / eager tokens/s)", rel_tol=0.5,
        explain="Compiling removes the per-op Python and dispatch overhead and fuses the "
                "small ops around each matmul; the reductions stream each weight once "
                "instead of calling MKL's GEMM at one row. How much that buys depends "
                "on how much of the step was overhead: 2.4-2.9x was recorded for code-m "
                "(bench runtimes), about 1.3x measured for code-s at the ci scale on the "
                "project machine, whose step is tiny either way; 1x if the compile fell "
                "back to eager."),
]
