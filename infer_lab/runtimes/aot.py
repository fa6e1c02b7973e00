"""AOTInductor: compile the decode step once, ahead of time, into a package file; a later
process loads the package in a second instead of compiling for a minute.

``torch.compile`` pays its compile at the first token of every new process (its on-disk
caches shorten, but do not remove, the cost). AOTInductor (``torch.export`` + inductor's
ahead-of-time mode) moves it to build time: :func:`package_step` exports the same step
:class:`~.compiled.CompiledDecoder` compiles, with the static cache's buffers as inputs
(so the package keeps no state of its own), and writes a ``.pt2`` file holding the
generated C++ (or Triton) code, compiled to a shared library, and the weights.
:class:`PackagedDecoder` loads that file and decodes through it; prefill stays eager, as
in the compiled decoder.

A package is built for one model, batch and cache length (static shapes, as ever): its
metadata records them, and loading it for anything else is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from ..model import Transformer
from .compiled import CompiledDecoder
from .gemv import reduction_linears
from .static_cache import StaticKVCache


class _Step(nn.Module):
    """The decode step as a pure function of its inputs: the cache buffers come in, are
    written in place, and nothing is stored in the module but the weights."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tok: torch.Tensor, pos: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        cache = StaticKVCache.over(k, v, kpos)
        return self.model(tok, cache, pos)[:, -1]  # (B, V)


def _signature(model: Transformer, batch: int, max_len: int) -> dict[str, str]:
    """What a package was built for; compared on load."""
    return {"infer_lab.config": json.dumps(model.config.to_dict(), sort_keys=True),
            "infer_lab.batch": str(batch), "infer_lab.max_len": str(max_len),
            "infer_lab.dtype": str(model.dtype)}


def package_step(model: Transformer, batch: int, max_len: int, path: str | Path,
                 reductions: bool | None = None) -> float:
    """Export and compile ``model``'s decode step ahead of time into ``path`` (a ``.pt2``
    file); returns the seconds it took (the cold start a loaded package saves).

    ``reductions`` as in :class:`~.compiled.CompiledDecoder` (default: on a CPU at batch 1).
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package is a .pt2 file, got {path.name!r}")
    model = model.eval()
    if reductions is None:
        reductions = model.device.type == "cpu" and batch == 1
    cache = StaticKVCache.for_model(model, batch, max_len)
    step = _Step(reduction_linears(model) if reductions else model)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
    pos = torch.zeros(batch, 1, dtype=torch.long, device=model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ep = torch.export.export(step, (tok, pos, cache.k, cache.v, cache.kpos), strict=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.pt2")  # never a half-written package at path
    torch._inductor.aoti_compile_and_package(
        ep, package_path=str(tmp),
        inductor_configs={"aot_inductor.metadata": _signature(model, batch, max_len)})
    tmp.replace(path)
    return time.perf_counter() - t0


class PackagedDecoder(CompiledDecoder):
    """:class:`~.compiled.CompiledDecoder`'s decode loop over a loaded AOTInductor package.

        seconds = package_step(model, 1, 128, "step.pt2")   # once, at build time
        dec = PackagedDecoder(model, "step.pt2")            # at startup: loads, no compile
        dec.generate([prompt], 64); dec.load_seconds
    """

    def __init__(self, model: Transformer, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no AOTInductor package at {path}: build one with "
                                    f"package_step(model, batch, max_len, {str(path)!r})")
        t0 = time.perf_counter()
        runner = torch._inductor.aoti_load_package(str(path))
        meta = runner.get_metadata()
        batch = int(meta.get("infer_lab.batch", -1))
        max_len = int(meta.get("infer_lab.max_len", -1))
        want = _signature(model, batch, max_len)
        wrong = [k.removeprefix("infer_lab.") for k in want if meta.get(k) != want[k]]
        if wrong:
            raise ValueError(f"{path.name} was built for another model ({', '.join(wrong)} "
                             "differ): rebuild it with package_step for this one")
        self.load_seconds = time.perf_counter() - t0
        super().__init__(model, batch, max_len, reductions=False)
        c = self.cache
        self._run = lambda tok, pos: runner(tok, pos, c.k, c.v, c.kpos)
        self.compile_seconds = 0.0  # compiled ahead of time: nothing at the first token
