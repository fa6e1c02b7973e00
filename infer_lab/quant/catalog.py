"""A catalog of every weight-quantization scheme, by name, built on the same weights.

``METHODS`` lists each scheme once: ours (round-to-nearest int8/int4 at several
granularities, NF4, FP8, GGUF blocks, GPTQ, AWQ) and the references (PyTorch's dynamic
int8 with the fbgemm kernel, bitsandbytes LLM.int8() and NF4). :func:`build` makes a
quantized copy of a model by scheme name; :func:`stored_bytes` and
:func:`linear_bits_per_weight` count what the copy stores. The benchmark
(``python -m infer_lab.bench quant``) and lab 02's Pareto explorer both read from here,
so the two always compare the same things.

The tied ``lm_head`` stays in fp32 (a quantized copy would add bytes), except in the
``+head`` schemes, which quantize the tied table once for both its uses. The ``-packed``
schemes are the same codes multiplied by PyTorch's packed CPU kernels
(:mod:`.packed`): the fused path whose decode is faster than fp32, where the plain
``int8`` / ``int4-g64`` layers dequantize a whole fp32 weight per call.
GPTQ and AWQ need calibration token ids in ``ctx["calib_ids"]``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..surgery import linears, set_module, shared_copy
from .apply import SCHEMES, quantize_model
from .awq import awq_quantize_model
from .gptq import gptq_quantize_model


class Unavailable(Exception):
    """A row that cannot run here; the message says why."""


# -- building the quantized models ----------------------------------------------------------
def eligible(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers every scheme quantizes: :func:`infer_lab.surgery.linears` with its
    default skip, i.e. all but the lm_head (and anything tied)."""
    return linears(model)


def swap(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> nn.Module:
    """A copy of ``model`` with each eligible linear replaced by ``make(name, linear)``
    (the other weights shared, not copied: ``make`` only reads the linear)."""
    model = shared_copy(model)
    for name, linear in eligible(model).items():
        set_module(model, name, make(name, linear))
    return model


def rtn(name: str):
    """An apply.SCHEMES preset. A layer whose width the group size does not divide (code-m's
    d_ff = 704 for g128) gets the largest halved group size that does, as an override."""
    def build(m: nn.Module, ctx) -> nn.Module:
        scheme = SCHEMES[name]
        gs, over = scheme.group_size, {}
        for n, lin in eligible(m).items():
            g = gs
            while g and lin.in_features % g:
                g //= 2
            if g != gs:
                over[n] = replace(scheme, group_size=g, overrides={})
        return quantize_model(shared_copy(m), replace(scheme, overrides=over))
    return build


def nf4(m: nn.Module, ctx) -> nn.Module:
    from .nf4 import NF4Linear

    return swap(m, lambda n, lin: NF4Linear.from_linear(lin, blocksize=64))


def fp8(m: nn.Module, ctx) -> nn.Module:
    from .fp8 import FP8Linear

    return swap(m, lambda n, lin: FP8Linear.from_linear(lin, fmt="e4m3"))


def gguf(fmt: str):
    """Q8_0, Q4_K or the Q4_K_M mix. A layer whose width is not a multiple of Q4_K's
    256-weight super-block falls back to Q8_0, as llama.cpp falls back to a format that
    fits (code-m's d_ff = 704 is such a width)."""
    def build(m: nn.Module, ctx) -> nn.Module:
        from .blocks import QK_K, Q4KLinear, Q8_0Linear, q4_k_m_assignment

        names = list(eligible(m))
        plan = (q4_k_m_assignment(names, m.config.n_layer) if fmt == "q4_k_m"
                else dict.fromkeys(names, fmt))
        cls = {"q8_0": Q8_0Linear, "q4_k": Q4KLinear}

        def make(name: str, lin: nn.Linear) -> nn.Module:
            f = plan[name] if lin.in_features % QK_K == 0 else "q8_0"
            return cls[f].from_linear(lin)

        return swap(m, make)
    return build


def dynamic_int8(m: nn.Module, ctx) -> nn.Module:
    """PyTorch's dynamic quantization: int8 per-channel weights, activations quantized
    per call, fbgemm's int8 GEMM (x86). The eager API is deprecated in favour of torchao
    but still ships with torch; its warning is silenced here."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise Unavailable("no fbgemm quantized engine in this torch build")
    spec = dict.fromkeys(eligible(m), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # in place on a shared copy: quantize_dynamic's own copy would be a second one
        return quantize_dynamic(shared_copy(m), spec, dtype=torch.qint8, inplace=True)


def _bnb():
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a backend that fails to load
        raise Unavailable(f"bitsandbytes not importable: {e}") from e
    return bnb


def bnb_int8(m: nn.Module, ctx) -> nn.Module:
    """LLM.int8(): int8 row-wise weights; activation columns above 6.0 in fp."""
    bnb = _bnb()

    def make(name: str, lin: nn.Linear) -> nn.Module:
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                has_fp16_weights=False, threshold=6.0)
        q.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False,
                                     has_fp16_weights=False)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        return q.to(lin.weight.device)  # the move is what quantizes the weight

    return _checked(swap(m, make), m)


def bnb_nf4(m: nn.Module, ctx) -> nn.Module:
    """QLoRA's NF4, block 64, bitsandbytes' default double quantization of the absmax."""
    bnb = _bnb()

    def make(name: str, lin: nn.Linear) -> nn.Module:
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              quant_type="nf4", compute_dtype=lin.weight.dtype)
        q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                     quant_type="nf4", blocksize=64)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        return q.to(lin.weight.device)

    return _checked(swap(m, make), m)


def _checked(q: nn.Module, ref: nn.Module) -> nn.Module:
    """One forward, so a backend that cannot run here becomes a row with a reason."""
    try:
        with torch.inference_mode():
            q(torch.zeros(1, 2, dtype=torch.long, device=ref.device))
    except Exception as e:
        raise Unavailable(f"forward failed here: {type(e).__name__}: {e}") from e
    return q


def calibrated(fn: Callable[..., nn.Module]):
    """GPTQ / AWQ at ``ctx["group_size"]`` from ``ctx["calib_ids"]``."""
    def build(m: nn.Module, ctx) -> nn.Module:
        if ctx.get("calib_ids") is None:
            raise Unavailable("needs calibration text (random weights have no "
                              "activations worth calibrating on)")
        # Pass only the options this quantizer takes (AWQ's grid size and sample).
        params = inspect.signature(fn).parameters
        extra = {k: v for k, v in ctx.get("options", {}).items() if k in params}
        # GPTQ and AWQ read each weight and swap in new layers: a shared copy is enough
        return fn(shared_copy(m), ctx["calib_ids"], bits=4,
                  group_size=ctx.get("group_size", 64), **extra)
    return build


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[nn.Module, dict], nn.Module]
    int8: bool = False  # an 8-bit integer path, a contender for int8_speed_vs_fp32


METHODS: list[Method] = [
    Method("fp32", lambda m, ctx: m),
    Method("int8", rtn("int8"), int8=True),
    Method("int8-tensor", rtn("int8-tensor"), int8=True),
    Method("int8-packed", rtn("int8-packed"), int8=True),
    Method("int8-packed+head", rtn("int8-packed+head"), int8=True),
    Method("int8 dynamic (fbgemm)", dynamic_int8, int8=True),
    Method("bnb int8 (LLM.int8)", bnb_int8, int8=True),
    Method("q8_0", gguf("q8_0"), int8=True),
    Method("fp8-e4m3", fp8),
    Method("int4-channel", rtn("int4-channel")),
    Method("int4-g128", rtn("int4-g128")),
    Method("int4-g64", rtn("int4-g64")),
    Method("int4-g64-packed", rtn("int4-g64-packed")),
    Method("int4-g64-packed+head", rtn("int4-g64-packed+head")),
    Method("int4-g32", rtn("int4-g32")),
    Method("int4-g64-asym", rtn("int4-g64-asym")),
    Method("gptq int4-g64", calibrated(gptq_quantize_model)),
    Method("awq int4-g64", calibrated(awq_quantize_model)),
    Method("nf4-b64", nf4),
    Method("bnb nf4", bnb_nf4),
    Method("q4_k", gguf("q4_k")),
    Method("q4_k_m", gguf("q4_k_m")),
]


# -- bytes --------------------------------------------------------------------------------
def _bytes(v: Any, seen: set[int]) -> int:
    """Bytes of a state_dict value: tensors, quantized tensors, and the (weight, bias)
    tuples that torch's quantized linears keep as packed params; each storage once."""
    if isinstance(v, (tuple, list)):
        return sum(_bytes(x, seen) for x in v)
    if not isinstance(v, torch.Tensor) or v.numel() == 0:
        return 0
    if v.is_quantized:
        extra = 8 if v.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric) \
            else 8 * v.q_per_channel_scales().numel()  # fp32 scale + int32 zero point
        return v.numel() * v.element_size() + extra
    key = v.untyped_storage().data_ptr()
    if key in seen:
        return 0
    seen.add(key)
    return v.numel() * v.element_size()


def stored_bytes(module: nn.Module, skip_bias: bool = False) -> int:
    """Bytes a module stores (parameters, buffers, packed params), tied tensors once."""
    seen: set[int] = set()
    total = 0
    for k, v in module.state_dict(keep_vars=True).items():
        if skip_bias and k.rsplit(".", 1)[-1] == "bias":
            continue
        if skip_bias and isinstance(v, tuple):  # torch's packed (weight, bias)
            v = v[0]
        total += _bytes(v, seen)
    return total


def linear_bits_per_weight(model: nn.Module, names: list[str]) -> float:
    """Bits per weight of the quantized layers: every stored byte of the layer (codes,
    scales, zero points) but its bias, over its in * out weights."""
    total = sum(stored_bytes(model.get_submodule(n), skip_bias=True) for n in names)
    n_weights = sum(model.get_submodule(n).in_features * model.get_submodule(n).out_features
                    for n in names)
    return 8 * total / n_weights


def build_all(fp: nn.Module, ctx: dict, progress=None) -> dict[str, nn.Module | str]:
    """name -> quantized model, or the reason it is not available."""
    out: dict[str, nn.Module | str] = {}
    for method in METHODS:
        try:
            out[method.name] = method.build(fp, ctx).eval()
        except Unavailable as e:
            out[method.name] = str(e)
        except (ValueError, RuntimeError, NotImplementedError) as e:
            out[method.name] = f"failed: {type(e).__name__}: {e}"
        if progress is not None:
            progress.update(1)
    return out


METHOD_NAMES: list[str] = [m.name for m in METHODS]


def method(name: str) -> Method:
    for m in METHODS:
        if m.name == name:
            return m
    raise ValueError(f"no quantization method {name!r}; choose from {METHOD_NAMES}")


def build(fp: nn.Module, name: str, ctx: dict | None = None) -> nn.Module:
    """A quantized copy of ``fp`` by method name (``fp`` itself for "fp32").

    Raises :class:`Unavailable` with the reason when the method cannot run here.
    """
    return method(name).build(fp, ctx or {}).eval()
