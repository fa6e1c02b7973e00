"""A distilled early-exit draft: the target's first layers and a trained exit adapter.

DistillSpec (Zhou et al. 2024) tunes a small model towards the target's distributions.
For code-m the small model is the zoo's code-s. SmolLM2-135M is the smallest model of its
family and no smaller one with its tokenizer ships offline, so its draft is carved out
of the target itself, as in Kangaroo (Liu et al. 2024) and LayerSkip (Elhoushi et al.
2024): the first ``n_layer`` of the target's layers, shared and frozen, then a small
residual adapter, then the target's own final norm and ``lm_head``:

    h   = layers[:n](emb(x))                 the target's, shared (its first n layers)
    h'  = h + up(silu(down(norm(h))))        the adapter: the only weights it stores
    q   = softmax(lm_head(norm_f(h')))       the target's head, over a draft vocabulary

The adapter learns, by the forward KL to the target's distribution at T = 1 (the target's
features cached, as for EAGLE), to map an early layer's state to what the last layer
would say; it starts at zero, so an untrained draft is a plain early exit. Only the
adapter (and the draft vocabulary, FR-Spec) is saved: the draft is small on disk, and a
draft step reads n layers and 8,192 rows of the head, not the whole model.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..kv_cache import AttentionCache
from ..model import RMSNorm, Transformer
from .features import DraftHead, DraftVocab, features_and_logits


class ExitAdapter(nn.Module):
    """``h + up(silu(down(norm(h))))`` with ``up`` zero at first: the identity."""

    def __init__(self, d_model: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"the adapter's rank must be >= 1, got {rank}")
        self.norm = RMSNorm(d_model)
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, d_model, bias=False)
        nn.init.normal_(self.down.weight, std=d_model ** -0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.silu(self.down(self.norm(h))))  # (..., C)


class EarlyExitDraft(DraftVocab, nn.Module):
    """A draft model with a :class:`~infer_lab.model.Transformer`'s decoding contract
    (``config``, ``forward(idx, cache, pos, last_only)``, ``device``, ``dtype``) whose only
    weights are its adapter: the target's layers are read, not owned (not in its
    ``state_dict``, not moved by ``.to``)."""

    def __init__(self, target: Transformer, n_layer: int, rank: int = 256):
        super().__init__()
        if not 1 <= n_layer < target.config.n_layer:
            raise ValueError(f"an early exit needs 1 <= n_layer < the target's "
                             f"{target.config.n_layer} layers, got {n_layer}")
        object.__setattr__(self, "target", target)  # not a submodule: shared, not saved
        self.config: ModelConfig = replace(target.config, n_layer=n_layer)  # its KV cache
        self.adapter = ExitAdapter(target.config.d_model, rank)
        self.set_vocab(None)
        self._head: DraftHead | None = None

    @property
    def device(self) -> torch.device:
        return self.adapter.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.norm.weight.dtype

    def set_vocab(self, ids: torch.Tensor | None) -> None:
        super().set_vocab(ids)
        self._head = None  # rebuilt from the target's head at the next forward

    def head(self) -> DraftHead:
        """The target's head over the draft vocabulary, rebuilt when the target moved (or
        when a row copy made under inference mode would meet autograd)."""
        w, h = self.target.lm_head.weight, self._head
        if h is None or (h.weight.dtype, h.weight.device) != (w.dtype, w.device) or (
                h.weight.is_inference() and not torch.is_inference_mode_enabled()):
            self._head = DraftHead(self.target, self.vocab)
        return self._head

    def exit_state(self, idx: torch.Tensor, cache: AttentionCache | None = None,
                   pos: torch.Tensor | None = None) -> torch.Tensor:
        """The adapted state after the first ``n_layer`` layers, normed: (B, T, C)."""
        h = self.target.hidden(idx, cache, pos, n_layer=self.config.n_layer)  # (B, T, C)
        return self.target.norm(self.adapter(h.to(self.dtype)).to(h.dtype))

    def forward(self, idx: torch.Tensor, cache: AttentionCache | None = None,
                pos: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V); -inf outside the draft vocabulary, so it never proposes
        those tokens and its q (for exact sampling) is zero there."""
        f = self.exit_state(idx, cache, pos)
        if last_only:
            f = f[:, -1:]
        head = self.head()
        logits = head.logits(f)  # (B, T, Vd)
        if head.vocab is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], head.size), float("-inf"))
        return full.index_copy_(-1, head.vocab, logits)  # (B, T, V)


def early_exit_loss(draft: EarlyExitDraft, target: Transformer, x: torch.Tensor,
                    features: torch.Tensor | None = None, ce_stride: int = 1) -> torch.Tensor:
    """Forward KL(p_target || q_draft) at T = 1 over the full vocabulary, on every
    ``ce_stride``-th position (the 49k-row head dominates a step). ``features``: the
    target's final-norm outputs (B, T, C), cached; None: computed."""
    from ..distill.losses import kd_loss

    with torch.no_grad():
        if features is None:
            features = features_and_logits(target, x)[0]
        teacher = target.lm_head(features[:, ::ce_stride].to(target.dtype))  # (B, T', V)
    f = draft.exit_state(x)[:, ::ce_stride]  # (B, T', C): grads reach the adapter only
    return kd_loss(target.lm_head(f), teacher, temperature=1.0)
