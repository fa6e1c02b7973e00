"""The target's last hidden state ("features"), which learned drafts read.

Medusa's heads and EAGLE's draft layer predict from the vector the target's ``lm_head``
multiplies: the output of the final norm. A forward hook on ``model.norm`` records it,
so the model needs no second output and the drafts plug in from outside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..model import Transformer


@contextlib.contextmanager
def capture_features(model: Transformer) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model`` appends its final-norm output
    (B, T, C) to the yielded list."""
    seen: list[torch.Tensor] = []
    handle = model.norm.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def features_and_logits(model: Transformer, idx: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, T, C), logits (B, T, V)) of one forward without a cache."""
    with capture_features(model) as seen:
        logits = model(idx)
    return seen[-1], logits
