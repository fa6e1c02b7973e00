"""Model surgery: find the linear layers a technique may touch, and swap them by name.

Quantizers, pruners and calibration all change a model from outside (gpt-fast's
"quantize by module swap"): they pick some ``nn.Linear`` layers by their dotted names
(``layers.3.mlp.w2``) and replace or edit them. Which layers is one rule, here:

    touch(name) = not matches(name, skip) and not tied(name)

* ``skip`` is a tuple of globs (:mod:`fnmatch`, case-sensitive) over dotted module
  names. A pattern names a module *and everything inside it*: ``"layers.0"`` skips the
  whole first block, ``"*.mlp.w2"`` every down projection, ``"lm_head"`` the head.
  The default, :data:`DEFAULT_SKIP`, keeps the vocabulary projection: in small models it
  is the most sensitive layer, and quantizing a tied one would *add* bytes.
* A weight **tied** to another parameter (the zoo's ``lm_head`` shares the token
  embedding) is never touched: editing it would edit the embedding too.

Only plain ``nn.Linear`` layers count (``type(m) is nn.Linear``): an already swapped
layer, even a subclass of nn.Linear such as bitsandbytes', is not swapped again.
"""

from __future__ import annotations

import fnmatch

from torch import nn

DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether a glob of ``patterns`` names module ``name`` or a module it lies inside."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]  # itself, parents
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def tied(model: nn.Module, name: str) -> bool:
    """Whether the weight of module ``name`` is also some other module's parameter."""
    ptr = model.get_submodule(name).weight.data_ptr()
    return any(p.data_ptr() == ptr and not pn.startswith(name + ".")
               for pn, p in model.named_parameters(remove_duplicate=False))


def linears(model: nn.Module, skip: tuple[str, ...] | list[str] = DEFAULT_SKIP,
            keep_tied: bool = False) -> dict[str, nn.Linear]:
    """Name -> nn.Linear for every layer the one rule lets a technique touch, in model order.

    skip: globs of modules left alone (see the module docstring); ``()`` skips nothing
        but tied weights (pruning an untied head is pruning one more matrix).
    keep_tied: also list tied layers, for a caller that refuses them with its own error.
    """
    return {n: m for n, m in model.named_modules()
            if type(m) is nn.Linear and not matches(n, skip)
            and (keep_tied or not tied(model, n))}


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``name`` in ``model``, in place of what was there."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def block_index(name: str) -> int | None:
    """The block ``i`` a module sits in (``layers.<i>.``, the Transformer's blocks), or None."""
    parts = name.split(".")
    for i in range(len(parts) - 2):  # a module *inside* the block: a component follows i
        if parts[i] == "layers" and parts[i + 1].isdecimal():
            return int(parts[i + 1])
    return None


__all__ = ["DEFAULT_SKIP", "block_index", "linears", "matches", "set_module", "tied"]


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with ``model``.

    Swapping a submodule of the copy (:func:`set_module`), or assigning it a new
    Parameter, leaves ``model`` alone, and no weight is copied: quantizing a copy of a
    540 MB model costs the quantized layers, not another 540 MB. Editing a shared tensor
    in place (``weight.data = ...``, ``weight.mul_()``) would change both: for that,
    ``copy.deepcopy``.
    """
    import copy
    import itertools

    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)
