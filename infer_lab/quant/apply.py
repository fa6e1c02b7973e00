"""Apply weight quantization to a model from outside: swap nn.Linear for quantized ones.

The model code never changes (gpt-fast's "quantize by module swap"): a :class:`Scheme`
says which bits and granularity to use, with per-layer overrides by glob on the module
name (``"layers.0.*"``, ``"*.mlp.w2"``), so that sensitive layers can stay in higher
precision (mixed precision, as in llama.cpp's Q4_K_M keeping some tensors at 6 bits).

A packed scheme (``"int8-packed"``, ``"int4-g64-packed"``) multiplies the same codes with
PyTorch's packed CPU kernels (:mod:`.packed`) instead of dequantizing per call; a
``+head`` scheme also quantizes the token embedding and the lm_head tied to it, one set of
codes for both (:mod:`.embedding`): SmolLM2-135M's tied table is 28% of its weights.

Which layers are sensitive? :func:`sensitivity_scan` quantizes one layer at a time and
measures how much held-out perplexity rises: Delta PPL_l = PPL(Q_l(model)) - PPL(model).
It is the simplest, most direct proxy (one ablation per layer); HAWQ (Dong et al. 2019)
estimates the same ranking from Hessian traces instead, without the extra forwards.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from torch import nn

from ..surgery import DEFAULT_SKIP, linears, matches, set_module, tied
from .embedding import QuantizedEmbedding
from .int4 import Int4Linear
from .int8 import Int8Linear
from .packed import PackedFallback, PackedInt4Linear, pack_layer
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
    packed: multiply with PyTorch's packed CPU kernels (:mod:`.packed`, bf16 activations in
        the product); a layer they cannot take stays unfused, and quantize_model warns.
    embeddings: also quantize the token embeddings (``nn.Embedding``): a head tied to one
        is quantized once and the lookup reads its codes; an embedding tied to a head the
        scheme skips stays as it is, tied. Needs ``lm_head`` out of ``skip``.
    """

    bits: int = 8
    granularity: Granularity = "channel"
    group_size: int | None = None
    symmetric: bool = True
    overrides: dict[str, Scheme | None] = field(default_factory=dict)
    skip: tuple[str, ...] = DEFAULT_SKIP
    packed: bool = False
    embeddings: bool = False

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
        return (f"int{self.bits}-{g}{'' if self.symmetric else '-asym'}"
                f"{'-packed' if self.packed else ''}{'+head' if self.embeddings else ''}")


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
# The same math through the packed kernels; "+head": the tied embedding and lm_head too.
SCHEMES |= {f"{name}-packed": replace(SCHEMES[name], packed=True) for name in
            ("int8", "int8-tensor", "int4-channel", "int4-g128", "int4-g64", "int4-g32",
             "int4-g64-asym")}
SCHEMES |= {f"{name}+head": replace(SCHEMES[name], embeddings=True, skip=()) for name in
            ("int8", "int4-g64", "int8-packed", "int4-g64-packed")}
# The tied table is the most sensitive weight of small models: int4 body, int8 table.
SCHEMES["int4-g64-packed+int8-head"] = replace(SCHEMES["int4-g64-packed"], skip=(), overrides={
    "lm_head": SCHEMES["int8-packed+head"], "tok_emb": SCHEMES["int8-packed+head"]})


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule is a quantized layer (any module setting is_quantized)."""
    return any(getattr(m, "is_quantized", False) for m in model.modules())


def quantize_linear(linear: nn.Linear, scheme: Scheme) -> tuple[nn.Module, str | None]:
    """One nn.Linear -> its Int8Linear / Int4Linear replacement, packed when the scheme
    says so and the kernels take it; and why a packed scheme kept it unfused (else None)."""
    check_weight(linear.weight, "linear weight")
    cls = LINEAR_BY_BITS[scheme.bits]
    layer = cls.from_linear(linear, scheme.granularity, scheme.group_size, scheme.symmetric)
    return pack_layer(layer) if scheme.packed else (layer, None)


def tied_embedding(model: nn.Module, name: str) -> str | None:
    """The name of the nn.Embedding whose weight linear ``name`` shares, if any."""
    ptr = model.get_submodule(name).weight.data_ptr()
    return next((n for n, m in model.named_modules()
                 if type(m) is nn.Embedding and m.weight.data_ptr() == ptr), None)


def quantize_embedding(emb: nn.Embedding, scheme: Scheme, head: nn.Module | None
                       ) -> QuantizedEmbedding:
    """A lookup over the quantized ``head`` it is tied to, or over its own codes (unfused:
    a lookup multiplies nothing). A packed int4 head whose layout this CPU does not let us
    read back gives the lookup its own codes instead (the same values, stored twice)."""
    if isinstance(head, PackedInt4Linear) and not head.rows_readable:
        warnings.warn("the int4 pack layout of this CPU is not one the lookup reads: the "
                      "embedding keeps its own copy of the codes", PackedFallback, stacklevel=3)
        head = None
    if head is not None:
        return QuantizedEmbedding(head, tied=True, dtype=emb.weight.dtype)
    as_linear = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, device="meta")
    as_linear.weight = emb.weight  # shared, not copied: quantization only reads it
    table, _ = quantize_linear(as_linear, replace(scheme, packed=False))
    return QuantizedEmbedding(table, tied=False, dtype=emb.weight.dtype)


def quantize_model(model: nn.Module, scheme: Scheme | str = "int8",
                   only: list[str] | None = None) -> nn.Module:
    """Replace the model's nn.Linear layers by quantized ones, **in place**; returns it.

    In place because a copy would need twice the memory of the model, which is what
    quantization is trying to save; ``copy.deepcopy(model)`` first to keep the original.
    only: quantize just these module names (used by :func:`sensitivity_scan`).
    Raises ValueError for an already-quantized model, NaN/Inf weights, a group size that
    does not divide a layer's input dimension, or a tied weight (such as an lm_head
    shared with the embedding) that the scheme neither skips nor quantizes with its
    embedding (``embeddings=True``). Warns (:class:`~.packed.PackedFallback`) once, listing
    the layers a packed scheme kept unfused and why.
    """
    if isinstance(scheme, str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
        scheme = SCHEMES[scheme]
    if is_quantized(model):
        raise ValueError("model is already quantized; quantize the original (fp) model, "
                         "not a quantized one: re-quantizing compounds the rounding error")
    plan: dict[str, nn.Module] = {}
    kept: dict[str, str] = {}  # layer -> why a packed scheme left it unfused
    heads: dict[str, str] = {}  # embedding -> the quantized head tied to it
    # Tied layers are listed only to refuse them (unless quantized with their embedding):
    # the scheme asked for them by not skipping them, and silently leaving them would
    # hide that.
    for name, linear in linears(model, scheme.skip, keep_tied=True).items():
        sub = scheme.for_module(name)
        if sub is None or (only is not None and name not in only):
            continue
        if tied(model, name):
            emb = tied_embedding(model, name) if sub.embeddings else None
            if emb is None or scheme.for_module(emb) is None:
                raise ValueError(f"{name}.weight is tied to another parameter (e.g. the token "
                                 f"embedding); add {name!r} to the scheme's skip, or quantize "
                                 "both with a '+head' scheme (embeddings=True)")
            heads[emb] = name
        try:  # quantize every layer before swapping any: an error leaves the model as is
            plan[name], reason = quantize_linear(linear, sub)
        except ValueError as e:
            raise ValueError(f"{name}: {e} (set an override for this layer)") from e
        if reason is not None:
            kept[name] = reason
    for name, emb in model.named_modules():
        if type(emb) is not nn.Embedding or name in plan:
            continue
        sub = scheme.for_module(name)
        head = plan.get(heads.get(name, ""))
        untied = not any(p is emb.weight for n, p in model.named_parameters(
            remove_duplicate=False) if not n.startswith(name + "."))
        if head is not None or (sub is not None and sub.embeddings and untied and
                                (only is None or name in only)):
            plan[name] = quantize_embedding(emb, sub or scheme, head)
    if kept:
        warnings.warn(f"{scheme}: {len(kept)} layer(s) kept unfused: " + "; ".join(
            f"{n} ({r})" for n, r in kept.items()), PackedFallback, stacklevel=2)
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
