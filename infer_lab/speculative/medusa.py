"""Medusa: extra decoding heads on the target's last hidden state (Cai et al. 2024).

The target's ``lm_head`` turns the feature h_t into the distribution of token t+1.
Head i (i = 1..K) is one residual block, h + SiLU(W_i h), followed by the *same*
``lm_head``; it is trained, with the target frozen, to predict token t+1+i from h_t.
At decode time one target forward gives h at the last accepted token, the heads give
top-b candidates for each of the next K positions, and their product is a static tree
that the target verifies in its next forward (:mod:`.tree`). The heads cost K small
matmuls and K lm_head rows per round: no draft model, no draft KV cache.

W_i starts at zero, so an untrained head predicts what ``lm_head`` predicts (the
Medusa paper's initialisation): training moves each head from "the next token again"
towards "the token i further on".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Transformer
from .features import DraftHead, DraftVocab, features_and_logits
from .tree import TokenTree, check_branching, tree_size
from .tree_decode import Round


@dataclass
class MedusaConfig:
    d_model: int
    vocab_size: int  # the target's: checked when the heads meet a target
    n_heads: int = 4


class ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, d)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.silu(self.linear(h))


class MedusaHeads(DraftVocab, nn.Module):
    """K residual heads; ``forward(h, lm_head)`` -> logits (K, ..., V)."""

    def __init__(self, cfg: MedusaConfig):
        super().__init__()
        if cfg.n_heads < 1:
            raise ValueError(f"Medusa needs at least one head, got n_heads={cfg.n_heads}")
        self.config = cfg
        self.heads = nn.ModuleList(ResBlock(cfg.d_model) for _ in range(cfg.n_heads))
        self.set_vocab(None)  # (Vd,) int32: the heads propose from these tokens only

    @classmethod
    def for_target(cls, target: Transformer, n_heads: int = 4) -> MedusaHeads:
        c = target.config
        return cls(MedusaConfig(c.d_model, c.vocab_size, n_heads)).to(target.device)

    def check_target(self, target: Transformer) -> None:
        c, m = target.config, self.config
        if (c.d_model, c.vocab_size) != (m.d_model, m.vocab_size):
            raise ValueError(f"these Medusa heads were trained for a target with d_model="
                             f"{m.d_model} and vocabulary {m.vocab_size}; this target has "
                             f"{c.d_model} and {c.vocab_size}")

    def forward(self, h: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        return torch.stack([lm_head(head(h)) for head in self.heads])  # (K, ..., V)


def medusa_loss(heads: MedusaHeads, target: Transformer, x: torch.Tensor,
                features: torch.Tensor | None = None, decay: float = 0.8,
                ce_stride: int = 1) -> torch.Tensor:
    """Head i's cross-entropy on token t+1+i from h_t, weighted decay^(i-1) (Medusa-1:
    later heads are harder and matter less, since a path rarely gets that deep).
    ``features``: the target's, cached; None: computed. ``ce_stride``: every s-th position
    only (each head's lm_head over a 49k vocabulary is most of a step's cost)."""
    h = features_and_logits(target, x)[0] if features is None else features  # (B, T, C)
    total, weights = 0.0, 0.0
    for i, head in enumerate(heads.heads):
        shift = i + 2  # h_t's lm_head predicts t+1; head i (from 0) predicts t+2+i
        if x.shape[1] <= shift:
            break
        pred = target.lm_head(head(h[:, : x.shape[1] - shift: ce_stride]))  # (B, T', V)
        y = x[:, shift::ce_stride]  # (B, T')
        total = total + decay ** i * F.cross_entropy(pred.flatten(0, 1), y.flatten())
        weights += decay ** i
    return total / weights


class MedusaDrafter:
    """A :class:`~.tree_decode.TreeDrafter` from Medusa heads: depth d of the tree holds
    the top ``branching[d]`` tokens of head d, below every node of depth d - 1."""

    def __init__(self, heads: MedusaHeads, target: Transformer, branching: Sequence[int]):
        heads.check_target(target)
        branching = check_branching(branching)
        if len(branching) > heads.config.n_heads:
            raise ValueError(f"a tree of depth {len(branching)} needs {len(branching)} heads; "
                             f"these are {heads.config.n_heads}")
        self.heads, self.target, self.branching = heads, target, branching
        self.head = DraftHead(target, heads.vocab)  # lm_head, over the draft vocabulary

    def models(self) -> list[Transformer]:
        return []  # the heads read the target itself

    def depth(self) -> int:
        return len(self.branching)

    def size(self) -> int:
        return tree_size(self.branching)

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.feature: torch.Tensor | None = None  # h at the last accepted token

    @torch.inference_mode()
    def propose_tree(self) -> TokenTree:
        if self.feature is None:  # the target has not run yet: nothing to read
            return TokenTree([], [])
        tokens, parents, frontier = [], [], [-1]
        for d, b in enumerate(self.branching):
            logits = self.head.logits(self.heads.heads[d](self.feature))  # (Vd,)
            top = self.head.token_ids(torch.topk(logits, b).indices.tolist())
            new = []
            for node in frontier:
                for t in top:
                    new.append(len(tokens))
                    tokens.append(t)
                    parents.append(node)
            frontier = new
        return TokenTree(tokens, parents)

    def commit(self, round: Round) -> None:
        row = round.n_pending - 1 if not round.path else round.n_pending + round.path[-1]
        self.feature = round.features[row]  # (C,)
