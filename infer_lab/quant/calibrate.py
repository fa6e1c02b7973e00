"""Calibration for the methods that look at activations (GPTQ, AWQ).

GPTQ and AWQ both quantize a model block by block from the inputs each linear layer sees
on real text: :func:`calibration_ids` draws that text (training split only),
:func:`collect_inputs` records the inputs with forward hooks, and
:func:`quantize_blockwise` walks the blocks in order so that block i is calibrated on
the outputs of blocks 0..i-1 *already quantized* ("sequential" calibration, as in the
GPTQ paper): later layers see, and compensate for, the earlier layers' errors.

The walk is one pass: the inputs of block 0 are recorded once (a forward that stops
there), then each block runs on the hidden states the previous, already quantized, block
produced. Calibrating L blocks costs L block forwards, not L whole-model forwards (for a
30-layer model with a 49k vocabulary, minutes less per calibrated scheme).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..surgery import DEFAULT_SKIP, block_index, linears, set_module
from .apply import is_quantized


def calibration_ids(tokenizer, n_seq: int = 64, seq_len: int = 256,
                    seed: int = 0) -> torch.Tensor:
    """(n_seq, seq_len) token windows from random training-split stdlib files.

    Training split only: calibrating on the held-out text would leak it into the result.
    """
    from ..zoo.data import iter_files

    files = iter_files("train")
    rng = random.Random(seed)
    rng.shuffle(files)
    out = []
    for f in files:
        ids = tokenizer.encode(f.text)
        if len(ids) < seq_len:
            continue
        start = rng.randrange(len(ids) - seq_len + 1)
        out.append(ids[start:start + seq_len])
        if len(out) == n_seq:
            break
    if len(out) < n_seq:
        raise ValueError(f"only {len(out)} training files have {seq_len} tokens")
    return torch.tensor(out, dtype=torch.long)  # (n_seq, seq_len)


class _Collected(Exception):
    """Raised by a hook once every named module has seen its input: the rest of the
    forward (later blocks, the vocabulary projection) would be thrown away."""


@contextmanager
def _recording(model: nn.Module, names: list[str], after=None
               ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks that append each named module's input, (tokens, in) float32, to a
    list per name; ``after(got)`` runs after every append."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def record(name: str, x: torch.Tensor) -> None:
        got[name].append(x.detach().float().flatten(0, -2))
        if after is not None:
            after(got)

    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: record(n, args[0])) for n in names]
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def collect_inputs(model: nn.Module, calib_ids: torch.Tensor, names: list[str],
                   batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Run the model on ``calib_ids`` (N, T) and return each named module's input.

    name -> (N*T, in_features) float32. Forward hooks only: the model code is untouched.
    Each forward stops as soon as every named module has run, so calibrating block i
    costs blocks 0..i, not the whole model and its logits (for a 30-layer model with a
    49k vocabulary, about half the work and no (8, T, 49k) logits).
    """
    done = 0  # batches every named module has seen

    def stop_once_all_seen(got: dict[str, list[torch.Tensor]]) -> None:
        if all(len(xs) > done for xs in got.values()):  # whatever order they run in
            raise _Collected

    with _recording(model, names, stop_once_all_seen) as got:
        for done, b in enumerate(range(0, len(calib_ids), batch_size)):
            try:
                model(calib_ids[b:b + batch_size].to(model.device))
            except _Collected:
                pass
    return {n: torch.cat(xs) for n, xs in got.items()}  # (N*T, in)


def quantize_blockwise(model: nn.Module, calib_ids: torch.Tensor,
                       make: Callable[[str, nn.Linear, torch.Tensor], nn.Module],
                       group_size: int | None = None,
                       skip: tuple[str, ...] = DEFAULT_SKIP) -> nn.Module:
    """Swap each eligible nn.Linear for ``make(name, linear, inputs)``, block by block.

    Blocks are ``model.layers[i]``; each block's inputs are collected after the blocks
    before it were swapped. Tied weights (the lm_head) and ``skip`` (globs, the rule of
    :func:`infer_lab.surgery.linears`) are left alone.
    group_size is checked against every layer first, so a bad one fails before any swap.
    """
    if is_quantized(model):
        raise ValueError("model is already quantized; calibrate the fp model")
    names = list(linears(model, skip))
    for n in names:
        cols = model.get_submodule(n).in_features
        if group_size is not None and (not isinstance(group_size, int) or group_size <= 0
                                       or cols % group_size):
            raise ValueError(f"{n}: group_size {group_size!r} must be a positive divisor "
                             f"of in_features {cols}")
    blocks = list(model.layers) if hasattr(model, "layers") else []
    groups = [[n for n in names if block_index(n) == i] for i in range(len(blocks))]
    rest = [n for n in names if not any(n in g for g in groups)]
    if blocks:
        _walk_blocks(model, blocks, groups, calib_ids, make)
    if rest:  # layers outside the blocks: calibrated with whole forwards
        xs = collect_inputs(model, calib_ids, rest)
        for n in rest:
            set_module(model, n, make(n, model.get_submodule(n), xs.pop(n)))
    return model


@torch.no_grad()
def block_inputs(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 8
                 ) -> list[tuple[tuple, dict]]:
    """The arguments block 0 receives for each batch of ``calib_ids``: (hidden states
    (b, T, C), rope, cache, step, ...) as the model passes them, from forwards that stop
    there."""
    calls: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        calls.append((args, kwargs))
        raise _Collected

    hook = model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for b in range(0, len(calib_ids), batch_size):
            try:
                model(calib_ids[b:b + batch_size].to(model.device))
            except _Collected:
                pass
    finally:
        hook.remove()
    return calls


@torch.no_grad()
def _walk_blocks(model: nn.Module, blocks: list[nn.Module], groups: list[list[str]],
                 calib_ids: torch.Tensor, make) -> None:
    """Block by block: record the block's linears' inputs, swap them, then run the
    quantized block to get the next block's hidden states."""
    calls = block_inputs(model, calib_ids)
    for block, group in zip(blocks, groups):
        if group:
            with _recording(model, group) as got:
                for args, kwargs in calls:
                    block(*args, **kwargs)
            new = {n: make(n, model.get_submodule(n), torch.cat(got[n])) for n in group}
            for n, m in new.items():
                set_module(model, n, m)
        # the next block sees what this (now quantized) block outputs
        calls = [((block(*args, **kwargs), *args[1:]), kwargs) for args, kwargs in calls]
