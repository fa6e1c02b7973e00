"""EAGLE: a one-layer draft that extrapolates the target's features (Li et al. 2024).

Predicting the next *feature* (the target's final hidden state) is easier than
predicting the next token, and the target's own ``lm_head`` turns a good feature into
a good distribution. The draft is one decoder layer over pairs

    in_t  = fc([f_t ; emb(x_{t+1})])         f_t: the target's feature at t,
    f^_{t+1} = Block(in_<=t)                  x_{t+1}: the token that followed
    p^(x_{t+2}) = softmax(lm_head(f^_{t+1}))

trained with the target frozen on feature regression (smooth L1) plus the tokens'
cross-entropy. The token embedding and ``lm_head`` are the target's, shared, not saved.
The next token's embedding is what resolves the sampling uncertainty a feature alone
cannot (the paper's "shifted" input). At decode time the draft runs on its own
predictions, feature after feature, with its own one-layer KV cache; a tree grows like
:class:`~.tree_decode.ModelTreeDrafter`'s, each node fed as (f^ of its parent, its token).
After the target verifies, the draft forgets its predicted pairs and is fed the
accepted ones with the target's true features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..generate import GREEDY, Sampling
from ..kv_cache import KVCache, NoCache
from ..model import Block, Transformer, rope_frequencies
from .features import DraftHead, DraftVocab
from .tree import TokenTree, TreeCache, check_branching, tree_size, tree_visibility
from .tree_decode import Round, draw_children


class EagleDraft(DraftVocab, nn.Module):
    """fc over [feature; next token's embedding], then one decoder layer of the target's
    shape. ``forward(f, tokens, tok_emb, cache, pos)`` -> predicted features (B, T, C)."""

    def __init__(self, target_config: ModelConfig, d_ff: int | None = None):
        super().__init__()
        if target_config.block != "llama":
            raise ValueError("the EAGLE draft is a Llama-style layer (RoPE); this target is "
                             f"{target_config.block!r}")
        # d_ff: a narrower MLP than the target's keeps a large target's draft small
        self.config = replace(target_config, n_layer=1, d_ff=d_ff or target_config.d_ff)
        d = self.config.d_model
        self.fc = nn.Linear(2 * d, d)
        self.block = Block(self.config, 0)
        self.register_buffer("inv_freq", rope_frequencies(self.config), persistent=False)
        self.set_vocab(None)  # (Vd,) int32, a draft vocabulary: DraftVocab.set_vocab

    @classmethod
    def for_target(cls, target: Transformer, d_ff: int | None = None) -> EagleDraft:
        return cls(target.config, d_ff).to(target.device)

    def check_target(self, target: Transformer) -> None:
        c, m = target.config, self.config
        if (c.d_model, c.vocab_size, c.n_head, c.n_kv_head) != (
                m.d_model, m.vocab_size, m.n_head, m.n_kv_head):
            raise ValueError(f"this EAGLE draft was trained for a target with d_model="
                             f"{m.d_model}, vocabulary {m.vocab_size}; this target has "
                             f"d_model={c.d_model}, vocabulary {c.vocab_size}")

    def cache(self, max_len: int) -> KVCache:
        p = next(self.parameters())
        c = self.config
        return KVCache(1, 1, c.n_kv_head, c.head_dim, max_len, dtype=p.dtype, device=p.device)

    def forward(self, f: torch.Tensor, tokens: torch.Tensor, tok_emb: nn.Module,
                cache=None, pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = f.shape
        x = self.fc(torch.cat([f, tok_emb(tokens).to(f.dtype)], dim=-1))  # (B, T, C)
        cache = NoCache(B, f.device) if cache is None else cache
        step = cache.begin(T, pos)
        angles = step.pos.clamp(min=0)[:, None, :, None].float() * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)  # (B, 1, T, D)
        rope = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        return self.block(x, rope, cache, step)


def frequent_tokens(ids, n: int) -> torch.Tensor:
    """The ``n`` most frequent token ids of a stream (ties: the lower id), sorted by id."""
    import numpy as np

    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    top = np.argsort(-counts, kind="stable")[:n]
    return torch.from_numpy(np.sort(top)).to(torch.int32)


def eagle_loss(draft: EagleDraft, target: Transformer, x: torch.Tensor,
               features: torch.Tensor | None = None, token_weight: float = 0.1,
               ce_stride: int = 1, token_target: str = "data") -> torch.Tensor:
    """Smooth L1 between predicted and true features at t+1, plus ``token_weight`` times
    the cross-entropy of token t+2 through the target's lm_head (EAGLE's objective).

    ``features``: the target's, cached (:class:`~.features.FeatureBank`); None: computed.
    ``ce_stride``: the cross-entropy on every s-th position only; with a 49k vocabulary
    the lm_head's product costs ~10x the draft layer, and the regression term already
    trains every position. ``token_target``: "data", the cross-entropy with the token that
    followed (EAGLE's); "target", the KL from the target's own distribution, read off the
    true next feature through lm_head (acceptance is agreement with the target, not
    with the data: DistillSpec's argument, at feature level)."""
    from .features import features_and_logits

    f = features_and_logits(target, x)[0] if features is None else features  # (B, T, C)
    pred = draft(f[:, :-1], x[:, 1:], target.tok_emb)  # (B, T-1, C): f^ at t+1
    reg = F.smooth_l1_loss(pred, f[:, 1:])
    logits = target.lm_head(pred[:, :-1:ce_stride])  # (B, ~T/s, V): token t+2
    if token_target == "target":
        with torch.no_grad():
            teacher = F.log_softmax(target.lm_head(f[:, 1:-1:ce_stride]).float(), -1)
        ce = F.kl_div(F.log_softmax(logits.float(), -1).flatten(0, 1), teacher.flatten(0, 1),
                      log_target=True, reduction="batchmean")
    elif token_target == "data":
        ce = F.cross_entropy(logits.flatten(0, 1), x[:, 2::ce_stride].flatten())
    else:
        raise ValueError(f"token_target must be 'data' or 'target', got {token_target!r}")
    return reg + token_weight * ce


class EagleDrafter:
    """A :class:`~.tree_decode.TreeDrafter` from an EAGLE draft; ``branching`` and
    ``sampling`` as in :class:`~.tree_decode.ModelTreeDrafter` (greedy: the top b per
    node; sampled: b draws from the draft's distribution, which the sibling rule needs
    to accept as often as the distributions overlap, not just as often as p(top-1))."""

    def __init__(self, draft: EagleDraft, target: Transformer, branching: Sequence[int],
                 sampling: Sampling = GREEDY, vocab: torch.Tensor | None = None):
        draft.check_target(target)
        self.draft, self.target, self.branching = draft, target, check_branching(branching)
        self.sampling = sampling
        # The draft proposes from ``vocab`` only (default: the draft's own, if it has one)
        self.head = DraftHead(target, draft.vocab if vocab is None else vocab)

    def _draw(self, fh: torch.Tensor, b: int) -> tuple[list[int], torch.Tensor | None]:
        """Children below a node with predicted feature ``fh`` (C,): token ids, and q over
        the full vocabulary when sampling (zero outside the draft vocabulary)."""
        idx, q = draw_children(self.head.logits(fh), b, self.sampling, self.gen)  # (Vd,)
        return self.head.token_ids(idx), self.head.full(q)

    def models(self) -> list[Transformer]:
        return []

    def depth(self) -> int:
        return len(self.branching)

    def size(self) -> int:
        return tree_size(self.branching)

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.cache, self.gen = self.draft.cache(max_len), gen
        self.pairs: list[tuple[torch.Tensor, int, int]] = []  # (feature, next token, position)
        self.kept, self.position = 0, 0  # draft slots to keep; target position of pending

    def _run(self, f: torch.Tensor, tokens: list[int], pos: list[int], cache) -> torch.Tensor:
        dev = f.device
        return self.draft(f[None], torch.tensor([tokens], device=dev), self.target.tok_emb,
                          cache, torch.tensor([pos], device=dev))[0]  # (T, C)

    @torch.inference_mode()
    def propose_tree(self) -> TokenTree:
        if not self.pairs:  # the target has not run yet: no features to extrapolate
            return TokenTree([], [])
        f = torch.stack([p[0] for p in self.pairs])
        out = self._run(f, [p[1] for p in self.pairs], [p[2] for p in self.pairs], self.cache)
        self.pairs, self.kept = [], self.cache.length  # what stays after this round
        root_pos = int(self.cache.next_pos[0])  # position of the root (the next token)
        tokens, parents, qs, frontier, frontier_f = [], [], [], [-1], [out[-1]]
        for d, b in enumerate(self.branching, start=1):
            new, new_parent_f = [], []
            for node, fh in zip(frontier, frontier_f):
                kids, q = self._draw(fh, b)
                for t in kids:
                    new.append(len(tokens))
                    tokens.append(t)
                    parents.append(node)
                    qs.append(q)
                    new_parent_f.append(fh)
            if d == len(self.branching):
                break
            vis = tree_visibility(1, parents)[1 + new[0]:, 1:]  # nodes only: no pending here
            frontier_f = list(self._run(torch.stack(new_parent_f), [tokens[i] for i in new],
                                        [root_pos + d - 1] * len(new),
                                        TreeCache(self.cache, self.kept, vis.to(f.device))))
            frontier = new
        return TokenTree(tokens, parents, None if self.sampling.greedy else torch.stack(qs))

    def commit(self, round: Round) -> None:
        """Forget the predicted pairs; queue the accepted ones with the target's features:
        (f_p, s_{p+1}) at position p for every position the target just computed."""
        self.cache.rollback(self.kept)
        P, path = round.n_pending, round.path
        rows = list(range(P)) + [P + n for n in path]  # feature rows, in position order
        nxt = round.tokens[1:P] + [round.tokens[P + n] for n in path] + [round.next_token]
        a = self.position  # the target position of the first pending token
        self.pairs += [(round.features[r], t, a + k) for k, (r, t) in enumerate(zip(rows, nxt))]
        self.position = a + len(rows)
