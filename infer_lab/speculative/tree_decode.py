"""Tree speculative decoding: a draft proposes a token tree, the target verifies it in one
forward (:mod:`.tree`), both caches keep the accepted path.

:class:`ModelTreeDrafter` grows a *static* tree from a draft model, Medusa-style: the
``branching`` tuple gives the children per node at each depth, e.g. (3, 2, 1) is 3 + 6
+ 6 = 15 nodes over depth 3. Each depth is one draft forward over the whole frontier
with the tree's ancestor mask (the same :class:`~.tree.TreeCache` the target uses), so
a tree costs ``len(branching)`` draft forwards, like a chain of that depth, each wider.
Greedy decoding takes each node's top-b tokens (deterministic, q one-hot); sampled
decoding draws b children independently from the draft's distribution (SpecInfer), and
the sibling rule of :func:`~.tree.verify_tree` keeps the target's distribution either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..generate import (
    GREEDY,
    Sampling,
    check_decoding,
    check_prompts,
    logits_to_probs,
    make_generator,
)
from ..kv_cache import KVCache
from ..model import Transformer
from ..validate import integer
from .features import capture_features
from .stats import SpecStats
from .tree import (
    TokenTree,
    TreeCache,
    ancestor_mask,
    check_branching,
    keep_path,
    tree_size,
    tree_visibility,
    verify_tree,
    verify_tree_greedy,
)


@dataclass
class Round:
    """What one target forward decided, told to the draft: the tokens it ran (the
    pending ones, then the tree's), the target's features at each (P + N, C), how many
    were pending, the accepted path (node indices) and the token chosen after it."""

    tokens: list[int]
    features: torch.Tensor
    n_pending: int
    path: list[int]
    next_token: int


class TreeDrafter(Protocol):
    """What :func:`tree_speculative_decode` needs from a draft that proposes trees."""

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None: ...

    def propose_tree(self) -> TokenTree:
        """Candidates below the root (the last token committed)."""
        ...

    def commit(self, round: Round) -> None:
        """What the target kept of the last tree (learned drafts also read its features)."""
        ...

    def depth(self) -> int:
        """The tree's depth: the most draft tokens one round can accept."""
        ...

    def size(self) -> int:
        """The most nodes a tree can have (the KV cache slots one round needs)."""
        ...

    def models(self) -> list[Transformer]: ...


def draw_children(logits: torch.Tensor, b: int, sampling: Sampling,
                  gen: torch.Generator | None) -> tuple[list[int], torch.Tensor | None]:
    """A node's ``b`` children from the draft's logits (V,): the top b when greedy (q
    None: one-hot proposals); else b independent draws from q, returned with q (SpecInfer:
    the sibling rule then keeps the target's distribution whatever q is)."""
    if sampling.greedy:
        return torch.topk(logits, b).indices.tolist(), None
    q = logits_to_probs(logits.float()[None], sampling)[0]  # (V,)
    return torch.multinomial(q, b, replacement=True, generator=gen).tolist(), q


class ModelTreeDrafter:
    """A draft model grows a static tree, ``branching[d]`` children per node at depth d+1."""

    def __init__(self, model: Transformer, branching: Sequence[int],
                 sampling: Sampling = GREEDY):
        self.model, self.branching, self.sampling = model, check_branching(branching), sampling

    def models(self) -> list[Transformer]:
        return [self.model]

    def depth(self) -> int:
        return len(self.branching)

    def size(self) -> int:
        return tree_size(self.branching)

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.cache = KVCache.for_model(self.model, 1, max_len)
        self.pending, self.gen = list(prompt), gen
        self.tokens: list[int] | None = None  # the last tree's tokens, until committed

    @torch.inference_mode()
    def propose_tree(self) -> TokenTree:
        dev = self.model.device
        self.start_slot, self.n_pending = self.cache.length, len(self.pending)
        logits = self.model(torch.tensor([self.pending], device=dev), self.cache)[0, -1:]
        base = int(self.cache.next_pos[0]) - 1  # position of the root (last pending token)
        tokens, parents, qs, depths = [], [], [], []
        frontier = [-1]
        for d, b in enumerate(self.branching, start=1):
            new = []
            for node, lg in zip(frontier, logits):
                kids, q = draw_children(lg, b, self.sampling, self.gen)
                for t in kids:
                    new.append(len(tokens))
                    tokens.append(t)
                    parents.append(node)
                    qs.append(q)
                    depths.append(d)
            if d == len(self.branching):
                break
            # feed the new frontier: each node sees the context, the pending tokens and
            # its ancestors (all fed earlier, in this order: node i sits at slot P + i)
            vis = tree_visibility(self.n_pending, parents)[self.n_pending + new[0]:]
            x = torch.tensor([[tokens[i] for i in new]], device=dev)
            pos = torch.tensor([[base + d] * len(new)], device=dev)
            logits = self.model(x, TreeCache(self.cache, self.start_slot, vis.to(dev)), pos)[0]
            frontier = new
        self.depths, self.tokens = depths, tokens
        q = None if self.sampling.greedy else torch.stack(qs)
        return TokenTree(tokens, parents, q)

    def commit(self, round: Round) -> None:
        if self.tokens is None:  # no tree this round (the context had no room for one)
            self.pending.append(round.next_token)
            return
        path = round.path
        fed = [n for n in path if self.depths[n] < len(self.branching)]  # leaves never fed
        keep_path(self.cache, self.start_slot, self.n_pending, fed)
        self.pending = [self.tokens[n] for n in path[len(fed):]] + [round.next_token]
        self.tokens = None


@torch.inference_mode()
def tree_speculative_decode(target: Transformer, drafter: TreeDrafter, prompt: list[int],
                            max_new_tokens: int, sampling: Sampling = GREEDY,
                            eos_id: int | None = None, rule: Callable | None = None,
                            ancestors: Callable | None = None
                            ) -> tuple[list[int], SpecStats]:
    """Generate up to ``max_new_tokens`` with a token tree per target forward.

    Greedy: the output equals the target's greedy decoding token for token. Sampled: it
    is distributed as the target's (recursive rejection over siblings). ``rule`` is the
    sampled acceptance rule, :func:`~.tree.verify_tree`'s signature ``(p, tree, gen) ->
    (path, next token)`` (None: ``verify_tree``), so a lab can run a learner's.
    ``ancestors(parents) -> (N, N) bool`` builds the target's tree mask (None:
    :func:`~.tree.ancestor_mask`), so a lab can verify with a learner's mask.
    Statistics count the tree's depth as the tokens proposed per round.
    """
    max_new_tokens = integer("max_new_tokens", max_new_tokens, lo=1)
    prompt = check_prompts(target, [prompt], max_new_tokens)[0]
    check_decoding(target, sampling, eos_id)
    for m in drafter.models():
        if m.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"draft vocabulary ({m.config.vocab_size}) differs from the "
                             f"target's ({target.config.vocab_size})")
    size = drafter.size()
    max_len = min(len(prompt) + max_new_tokens + size + 1, target.config.max_seq_len)
    gen = make_generator(sampling, target.device)
    cache = KVCache.for_model(target, 1, max_len)
    drafter.start(prompt, max_len, gen)
    stats, out, pending = SpecStats(), [], list(prompt)
    while len(out) < max_new_tokens and not (out and out[-1] == eos_id):
        t0 = time.perf_counter()
        room = cache.length + len(pending) + size <= cache.capacity
        # near the end of the context there is no room for a tree: a plain decode step
        tree = drafter.propose_tree() if room else TokenTree([], [])
        t1 = time.perf_counter()
        start, P = cache.length, len(pending)
        vis = tree_visibility(P, tree.parents, ancestors or ancestor_mask)  # (P+N, P+N)
        view = TreeCache(cache, start, vis.to(cache.kpos.device))
        base = int(cache.next_pos[0])
        pos = torch.tensor([list(range(base, base + P))
                            + [base + P - 1 + d for d in tree.depths()]], device=target.device)
        x = torch.tensor([pending + tree.tokens], device=target.device)
        with capture_features(target) as seen:
            logits = target(x, view, pos)[0, P - 1:]  # (1 + N, V): after the root, each node
        if sampling.greedy:
            path, nxt = verify_tree_greedy(logits.argmax(-1).tolist(), tree)
        else:
            accept = verify_tree if rule is None else rule
            path, nxt = accept(logits_to_probs(logits.float(), sampling), tree, gen)
        stats.target_seconds += time.perf_counter() - t1
        stats.draft_seconds += t1 - t0
        if room:
            stats.record(drafter.depth(), len(path))
        keep_path(cache, start, P, path)
        drafter.commit(Round(pending + tree.tokens, seen[-1][0], P, path, nxt))
        pending = [nxt]
        for tok in [tree.tokens[n] for n in path] + [nxt]:
            if len(out) < max_new_tokens and not (out and out[-1] == eos_id):
                out.append(tok)
    return out, stats

