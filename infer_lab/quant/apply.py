"""Apply weight quantization to a model from outside: swap nn.Linear for quantized ones.

The model code never changes (gpt-fast's "quantize by module swap"): a :class:`Scheme`
says which bits and granularity to use, with per-layer overrides by glob on the module
name (``"layers.0.*"``, ``"*.mlp.w2"``), so that sensitive layers can stay in higher
precision (mixed precision, as in llama.cpp's Q4_K_M keeping some tensors at 6 bits).

Which layers are sensitive? :func:`sensitivity_scan` quantizes one layer at a time and
measures how much held-out perplexity rises: Delta PPL_l = PPL(Q_l(model)) - PPL(model).
It is the simplest, most direct proxy (one ablation per layer); HAWQ (Dong et al. 2019)
estimates the same ranking from Hessian traces instead, without the extra forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from ..surgery import DEFAULT_SKIP, linears, matches, set_module, tied
from .int4 import Int4Linear
from .int8 import Int8Linear
from .primitives import Granularity, check_bits, check_weight


@dataclass(frozen=True)
class Scheme:
    """How to quantize: bits (8 or 4), granularity, symmetric or not, and exceptions.

    overrides: module-name glob -> Scheme to use instead, or None to keep that layer in
        full precision. The first matching pattern (in dict order) wins.
    skip: globs of layers never quantized, :data:`infer_lab.surgery.DEFAULT_SKIP`
        (``lm_head``) by default: in the zoo models it is tied to the token embedding, so
        a quantized copy would *add* bytes (the embedding stays in fp32 for the lookup),
        and the vocabulary projection is also the most sensitive layer of small models.
    Globs follow :mod:`infer_lab.surgery`'s one rule: a pattern names a module and
    everything inside it (``"layers.0"`` is the whole first block).
    """

    bits: int = 8
    granularity: Granularity = "channel"
    group_size: int | None = None
    symmetric: bool = True
    overrides: dict[str, Scheme | None] = field(default_factory=dict)
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.bits not in LINEAR_BY_BITS:
            raise ValueError(f"quantize_model has int8 and int4 linear layers; bits="
                             f"{self.bits} is only available as a primitive (quantize())")
        if self.group_size is not None and self.granularity == "channel":
            object.__setattr__(self, "granularity", "group")  # group_size implies groups
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("granularity='group' needs a group_size")

    def for_module(self, name: str) -> Scheme | None:
        """The scheme for the module called ``name``; None to leave it unquantized."""
        if matches(name, self.skip):
            return None
        for pat, sub in self.overrides.items():
            if matches(name, (pat,)):
                return sub
        return self

    def __str__(self) -> str:
        g = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        return f"int{self.bits}-{g}{'' if self.symmetric else '-asym'}"


LINEAR_BY_BITS: dict[int, type[nn.Module]] = {8: Int8Linear, 4: Int4Linear}

SCHEMES: dict[str, Scheme] = {
    "int8": Scheme(bits=8, granularity="channel"),
    "int8-tensor": Scheme(bits=8, granularity="tensor"),
    "int4-channel": Scheme(bits=4, granularity="channel"),
    "int4-g128": Scheme(bits=4, group_size=128),
    "int4-g64": Scheme(bits=4, group_size=64),
    "int4-g32": Scheme(bits=4, group_size=32),
    "int4-g64-asym": Scheme(bits=4, group_size=64, symmetric=False),
}


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule is a quantized layer (any module setting is_quantized)."""
    return any(getattr(m, "is_quantized", False) for m in model.modules())


def quantize_linear(linear: nn.Linear, scheme: Scheme) -> nn.Module:
    """One nn.Linear -> its Int8Linear / Int4Linear replacement."""
    check_weight(linear.weight, "linear weight")
    cls = LINEAR_BY_BITS[scheme.bits]
    return cls.from_linear(linear, scheme.granularity, scheme.group_size, scheme.symmetric)


def quantize_model(model: nn.Module, scheme: Scheme | str = "int8",
                   only: list[str] | None = None) -> nn.Module:
    """Replace the model's nn.Linear layers by quantized ones, **in place**; returns it.

    In place because a copy would need twice the memory of the model, which is what
    quantization is trying to save; ``copy.deepcopy(model)`` first to keep the original.
    only: quantize just these module names (used by :func:`sensitivity_scan`).
    Raises ValueError for an already-quantized model, NaN/Inf weights, a group size that
    does not divide a layer's input dimension, or a tied weight (such as an lm_head
    shared with the embedding) that the scheme does not skip.
    """
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
        scheme = SCHEMES[scheme]
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize the original (fp) model, "
                         "not a quantized one: re-quantizing compounds the rounding error")
    plan = {}
    # Tied layers are listed only to refuse them: the scheme asked for them by not
    # skipping them, and silently leaving them would hide that.
    for name, linear in linears(model, scheme.skip, keep_tied=True).items():
        sub = scheme.for_module(name)
        if sub is None or (only is not None and name not in only):
            continue
        if tied(model, name):
            raise ValueError(f"{name}.weight is tied to another parameter (e.g. the token "
                             f"embedding); add {name!r} to the scheme's skip")
        try:  # quantize every layer before swapping any: an error leaves the model as is
            plan[name] = quantize_linear(linear, sub)
        except ValueError as e:
            raise ValueError(f"{name}: {e} (set an override for this layer)") from e
    for name, module in plan.items():
        set_module(model, name, module)
    return model


@dataclass(frozen=True)
class Sensitivity:
    """Perplexity with one layer quantized at a time, against the fp baseline."""

    baseline_ppl: float
    ppl: dict[str, float]  # module name -> perplexity with only that layer quantized

    def delta(self) -> dict[str, float]:
        """PPL increase per layer, most sensitive first."""
        d = {n: p - self.baseline_ppl for n, p in self.ppl.items()}
        return dict(sorted(d.items(), key=lambda kv: -kv[1]))

    def most_sensitive(self, k: int) -> list[str]:
        return list(self.delta())[:k]

    def keep_in_full_precision(self, scheme: Scheme, k: int) -> Scheme:
        """``scheme`` with its k most sensitive layers left unquantized (mixed precision)."""
        keep = {name: None for name in self.most_sensitive(k)}
        return replace(scheme, overrides={**keep, **scheme.overrides})


def sensitivity_scan(model: nn.Module, tokenizer, text: str, scheme: Scheme | str = "int4-g64",
                     max_tokens: int = 2048, seq_len: int = 256,
                     progress: bool = True) -> Sensitivity:
    """Quantize each eligible layer alone and measure the perplexity of ``text``.

    The model is left unchanged: each layer is swapped in, measured and swapped back.
    Cost: (number of layers + 1) perplexity runs over ``max_tokens`` tokens.
    """
    from tqdm.auto import tqdm

    from ..quality import perplexity

    if isinstance(scheme, str):
        scheme = SCHEMES[scheme]
    if is_quantized(model):
        raise ValueError("run the sensitivity scan on the unquantized model")

    def ppl() -> float:
        return perplexity(model, tokenizer, text, seq_len=seq_len, max_tokens=max_tokens,
                          progress=False).ppl

    baseline = ppl()
    names = [n for n in linears(model, scheme.skip) if scheme.for_module(n) is not None]
    out = {}
    for name in tqdm(names, desc="sensitivity", disable=not progress):
        original = model.get_submodule(name)
        quantize_model(model, scheme, only=[name])
        try:
            out[name] = ppl()
        finally:
            set_module(model, name, original)
    return Sensitivity(baseline, out)
