"""Where one decode step's time goes: ``torch.profiler`` over a few steps, by op kind.

A profiler records every ATen op the step dispatches with its *self* CPU time (its own
time, not its children's: ``aten::linear`` calls ``aten::addmm``, and each is counted once),
so the self times of all ops add up to the profiled total. Grouping ops by what kind of
work they do tells which lever to pull (the gap analysis of issue 16, part 5):

    matmul        mm, addmm, bmm, linear, and the packed int8 / int4 CPU kernels
                  (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``): the weight bytes
    attention     scaled_dot_product_attention and its flash / math kernels, softmax
    norm          layer_norm / rms_norm, and the rsqrt, pow and mean of an eager RMSNorm
    rope          cos and sin of the rotary angles
    elementwise   add, mul, div, neg, silu, gelu, where, comparisons...: one pass over
                  activations each (in an eager model RoPE's and RMSNorm's mul/add land here)
    copy/cast     copy_, _to_copy, to, cat, clone, index_put_, scatter_: bytes moved, no math
    view/alloc    view, reshape, slice, transpose, empty, as_strided...: no bytes moved at
                  all, only Python and dispatcher overhead (why a small model is
                  "overhead-bound", and what compiling removes)
    embedding     embedding lookups
    other         everything else (argmax, item, arange, ...)

The classification reads the op's name only (:func:`op_kind`); it says what kind of work an
op is, not which layer issued it. :func:`profile_decode` takes the classifier as an
argument, so a lab can build its picture with the learner's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

KINDS = ("matmul", "attention", "norm", "rope", "elementwise", "copy/cast", "view/alloc",
         "embedding", "other")

# Exact op names (the part after "aten::"), per kind; op_kind checks two prefix rules first
# (kernel families whose names carry a suffix per backend).
OP_NAMES: dict[str, frozenset[str]] = {
    "matmul": frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "mv",
                         "addmv", "dot", "_weight_int8pack_mm", "_weight_int4pack_mm",
                         "_weight_int4pack_mm_for_cpu", "_int_mm", "_addmm_activation",
                         "mkldnn_linear", "_mkl_linear", "fbgemm_linear_int8_weight",
                         "quantized_linear_dynamic", "einsum"}),
    "attention": frozenset({"scaled_dot_product_attention", "softmax", "_softmax",
                            "_safe_softmax", "log_softmax", "_log_softmax"}),
    "norm": frozenset({"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm",
                       "group_norm", "native_group_norm", "rsqrt", "pow", "mean", "var",
                       "norm", "linalg_vector_norm"}),
    "rope": frozenset({"cos", "sin", "polar"}),
    "elementwise": frozenset({
        "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "exp", "log",
        "sqrt", "reciprocal", "abs", "sign", "tanh", "sigmoid", "silu", "silu_", "gelu",
        "relu", "relu_", "where", "clamp", "clamp_", "clamp_min", "clamp_max", "minimum",
        "maximum", "remainder", "floor_divide", "floor", "ceil", "round", "masked_fill",
        "masked_fill_", "bitwise_and", "bitwise_or", "bitwise_not", "__and__", "__or__",
        "__rshift__", "__lshift__", "lt", "le", "gt", "ge", "eq", "ne", "logical_not",
        "logical_and", "isnan", "isinf", "lerp", "addcmul", "erf", "triu", "tril"}),
    "copy/cast": frozenset({
        "copy_", "_to_copy", "to", "clone", "contiguous", "cat", "stack", "index_put_",
        "_index_put_impl_", "index_put", "scatter", "scatter_", "index_copy_", "gather",
        "index", "index_select", "repeat", "repeat_interleave", "fill_", "zero_",
        "zeros", "zeros_like", "ones", "full", "full_like", "masked_scatter_", "roll",
        "flip", "pad", "constant_pad_nd"}),
    "view/alloc": frozenset({
        "view", "_unsafe_view", "reshape", "as_strided", "slice", "select", "narrow",
        "transpose", "t", "permute", "unsqueeze", "squeeze", "expand", "expand_as",
        "flatten", "unflatten", "split", "split_with_sizes", "chunk", "unbind", "alias",
        "detach", "empty", "empty_strided", "empty_like", "resize_", "view_as", "numpy_T",
        "_reshape_alias", "lift_fresh", "unfold", "movedim", "diagonal", "result_type"}),
    "embedding": frozenset({"embedding", "embedding_bag", "_embedding_bag",
                            "_embedding_bag_forward_only"}),
}


def op_kind(op_name: str) -> str:
    """The kind (one of :data:`KINDS`) of a profiler op name such as ``"aten::addmm"``.

    Reads the name only: ``aten::`` (or another namespace) is dropped, then the exact name
    is looked up; the flash / math attention kernels (``_scaled_dot_product_*``) and the
    packed int4 kernels go by prefix. Anything unknown is ``"other"``."""
    name = op_name.rsplit("::", 1)[-1]
    if name.startswith(("_scaled_dot_product", "_flash_attention", "_efficient_attention")):
        return "attention"
    if name.startswith("_weight_int4pack_mm"):
        return "matmul"
    for kind, names in OP_NAMES.items():
        if name in names:
            return kind
    return "other"


@dataclass
class OpTime:
    """One op's self CPU time over the profiled steps, per step."""

    name: str  # as the profiler names it, e.g. "aten::_weight_int8pack_mm"
    kind: str
    ms_per_step: float
    calls_per_step: float


@dataclass
class DecodeProfile:
    """Self CPU time of a decode step by op and by kind (milliseconds per step)."""

    label: str
    steps: int
    ops: list[OpTime]  # slowest first
    by_kind: dict[str, float]  # every kind the classifier returned (ms per step), KINDS first
    total_ms: float  # the profiled step: the sum of every op's self time
    wall_ms: float  # the same step unprofiled (the profiler's own cost is not in it)
    notes: list[str] = field(default_factory=list)

    def share(self, kind: str) -> float:
        """Fraction of the profiled total spent in ``kind``."""
        return self.by_kind.get(kind, 0.0) / self.total_ms if self.total_ms else 0.0

    def dominant(self) -> str:
        """The kind with the most time."""
        return max(self.by_kind, key=self.by_kind.__getitem__)

    def top(self, kind: str | None = None, n: int = 5) -> list[OpTime]:
        """The ``n`` slowest ops (of ``kind`` only, when given)."""
        return [o for o in self.ops if kind is None or o.kind == kind][:n]


def _check(model: torch.nn.Module, prompt: list[int], steps: int, warmup: int) -> None:
    from ..model import Transformer

    if not isinstance(model, Transformer):
        raise TypeError(f"profile_decode takes an infer_lab Transformer (eager, or with "
                        f"quantized layers swapped in), got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (decode steps to profile), got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not prompt:
        raise ValueError("profile_decode needs a non-empty prompt (token ids)")
    need = len(prompt) + 1 + warmup + 2 * steps
    if need > model.config.max_seq_len:
        raise ValueError(f"a prompt of {len(prompt)} tokens + {warmup} warm-up and 2 x {steps} "
                         f"decode steps needs {need} positions; the model has "
                         f"{model.config.max_seq_len}")


@torch.inference_mode()
def profile_decode(model: torch.nn.Module, prompt: list[int], steps: int = 3,
                   warmup: int = 2, classify: Callable[[str], str] = op_kind,
                   label: str = "") -> DecodeProfile:
    """Profile ``steps`` greedy decode steps (batch 1, contiguous KV cache) after ``prompt``.

    Warm-up steps run first (the first calls of a kernel allocate and pick paths), then the
    same number of steps unprofiled, for the wall time, then ``steps`` profiled ones.
    ``classify`` maps an op name to its kind (default :func:`op_kind`); it must return a str.
    """
    from torch.profiler import ProfilerActivity, profile

    from ..generate import decode_one_token, prefill
    from ..kv_cache import KVCache

    _check(model, prompt, steps, warmup)
    cache = KVCache.for_model(model, 1, max_len=len(prompt) + 1 + warmup + 2 * steps)
    tok = prefill(model, [list(prompt)], cache).argmax(-1)  # (1,)
    for _ in range(warmup):
        tok = decode_one_token(model, tok, cache).argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        tok = decode_one_token(model, tok, cache).argmax(-1)
    wall = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tok = decode_one_token(model, tok, cache).argmax(-1)
    return summarize(prof.key_averages(), steps, wall * 1e3 / steps, classify, label)


def summarize(events, steps: int, wall_ms: float, classify: Callable[[str], str] = op_kind,
              label: str = "") -> DecodeProfile:
    """A :class:`DecodeProfile` from profiler averages (anything with ``key``,
    ``self_cpu_time_total`` in microseconds and ``count``), per step."""
    ops = []
    for e in events:
        kind = classify(e.key)
        if not isinstance(kind, str):
            raise TypeError(f"the classifier returned {kind!r} for op {e.key!r}; it must "
                            "return a kind name (a str)")
        ops.append(OpTime(e.key, kind, e.self_cpu_time_total / 1e3 / steps, e.count / steps))
    ops.sort(key=lambda o: -o.ms_per_step)
    by_kind = {k: 0.0 for k in KINDS}
    for o in ops:
        by_kind[o.kind] = by_kind.get(o.kind, 0.0) + o.ms_per_step
    total = sum(o.ms_per_step for o in ops)
    notes = [f"{k!r} is not one of op_kind's kinds" for k in by_kind if k not in KINDS]
    return DecodeProfile(label, steps, ops, by_kind, total, wall_ms, notes)
