"""Token trees: verify many draft continuations in one target forward.

A chain drafts one continuation; when its first token is wrong, everything after it is
wasted. A *tree* drafts several candidates per depth (SpecInfer, Miao et al. 2024;
Medusa, Cai et al. 2024; EAGLE-2's dynamic trees, Li et al. 2024), and the target scores
every node at once. The tree is flattened into one forward:

* node i sits at position ``base + depth(i)``: siblings share a position;
* node i may attend to the committed context and to its own ancestors (and itself),
  never to a sibling's branch: an *ancestor mask* replaces the causal rule among the
  new tokens. Our masks come from positions plus a visibility rule, so the tree is
  expressed through the cache contract (:class:`TreeCache` wraps a :class:`KVCache` for
  one forward), not inside the model;
* after verification the accepted path's K/V are moved to consecutive slots and the
  cache rolls back past the rest (:func:`keep_path`).

Verification walks down from the root. Greedy: follow the child whose token is the
target's argmax; the result equals greedy decoding of the target token for token.
Sampled: recursive rejection over siblings (SpecInfer; EAGLE): child x_i, drawn from
q_i, is accepted with probability min(1, p(x_i) / q_i(x_i)); on rejection the target's
distribution becomes the residual p <- norm(max(0, p - q_i)) and the next sibling is
tried against it; when every child is rejected the next token is drawn from what is
left. Each step is the chain's rule applied to "the next sibling or nothing", so the
emitted tokens have exactly the target's distribution. A rule that tries every sibling
against the *original* p (no residual) over-weights tokens the draft proposes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..generate import draw
from ..kv_cache import KVCache, KVStep


@dataclass
class TokenTree:
    """Draft candidates as a tree below the root (the last token the target has chosen).

    tokens[i] is node i's token, parents[i] its parent's index (-1: a child of the root);
    parents come before their children. q[i] is the draft distribution (V,) that
    tokens[i] was drawn from, or None for a deterministic proposal (top-k): one-hot.
    """

    tokens: list[int]
    parents: list[int]
    q: torch.Tensor | None = None  # (N, V)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"a tree needs one parent per token: {len(self.tokens)} tokens, "
                             f"{len(self.parents)} parents")
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i}'s parent is {p}: parents must be -1 (the root) "
                                 "or an earlier node")
        if self.q is not None and self.q.shape[0] != len(self.tokens):
            raise ValueError(f"q has {self.q.shape[0]} rows for {len(self.tokens)} nodes")

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> list[int]:
        """Depth of each node; the root's children are at depth 1."""
        d: list[int] = []
        for p in self.parents:
            d.append(1 if p < 0 else d[p] + 1)
        return d

    def children(self, node: int) -> list[int]:
        """Children of ``node`` (-1: the root), in the order they are tried."""
        return [i for i, p in enumerate(self.parents) if p == node]

    def path(self, node: int) -> list[int]:
        """Nodes from the root's child down to ``node``."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


def check_branching(branching) -> tuple[int, ...]:
    """A static tree's shape: children per node at each depth, every count >= 1."""
    if not branching or any(int(b) < 1 for b in branching):
        raise ValueError(f"branching needs one count >= 1 per depth, got {branching!r}")
    return tuple(int(b) for b in branching)


def tree_size(branching: tuple[int, ...]) -> int:
    """Nodes of a full static tree: b1 + b1*b2 + ... (the cache slots a round needs)."""
    n, width = 0, 1
    for b in branching:
        width *= b
        n += width
    return n


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """(N, N) bool: True where node i may see node j (j is i or one of its ancestors)."""
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]  # a node sees what its parent sees, and itself
    return mask


def tree_visibility(n_pending: int, parents: list[int],
                    ancestors: Callable[[list[int]], torch.Tensor] = ancestor_mask
                    ) -> torch.Tensor:
    """(n, n) bool over ``n_pending`` ordinary tokens then the tree's nodes: the pending
    tokens are causal, each node sees every pending token and its own ancestors
    (``ancestors(parents)``: :func:`ancestor_mask`, or a learner's, which lab 05 runs)."""
    if n_pending < 1:
        raise ValueError(f"a tree hangs below a pending token: n_pending must be >= 1, "
                         f"got {n_pending}")
    n = n_pending + len(parents)
    visible = torch.zeros(n, n, dtype=torch.bool)
    visible[:n_pending, :n_pending] = torch.ones(n_pending, n_pending, dtype=torch.bool).tril()
    visible[n_pending:, :n_pending] = True
    visible[n_pending:, n_pending:] = torch.as_tensor(ancestors(parents), dtype=torch.bool)
    return visible


class TreeCache:
    """A :class:`KVCache` seen through a tree's visibility rule, for one forward.

    Keys before slot ``tree_start`` are the committed context, visible to every new
    token; among the keys from ``tree_start`` on, new token t sees ``visible[t]``
    ((T, S - tree_start), S the cache's length after this forward). The target passes
    :func:`tree_visibility` of its whole tree; a draft growing a tree depth by depth
    passes the rows of each new frontier. Speaks the cache contract (``begin``,
    ``attend``), so the model runs a tree without knowing it.
    """

    def __init__(self, cache: KVCache, tree_start: int, visible: torch.Tensor):
        if type(cache) is not KVCache or cache.window is not None:
            raise ValueError("tree attention needs a plain contiguous KVCache (no sliding "
                             f"window, no quantized storage); got {type(cache).__name__}")
        if not 0 <= tree_start <= cache.length:
            raise ValueError(f"tree_start {tree_start} is outside the cache's {cache.length}")
        self.cache, self.tree_start, self.visible = cache, tree_start, visible

    def begin(self, T: int, pos: torch.Tensor | None) -> KVStep:
        start = self.cache.length
        if self.visible.shape != (T, start + T - self.tree_start):
            raise ValueError(f"visibility {tuple(self.visible.shape)} does not match {T} new "
                             f"tokens over {start + T - self.tree_start} tree slots")
        if start + T > self.cache.capacity:
            raise ValueError(f"the tree does not fit the KV cache: {start} + {T} tokens > "
                             f"capacity {self.cache.capacity}")
        step = self.cache.begin(T, pos)
        B = step.pos.shape[0]
        old = (self.cache.kpos[:, :self.tree_start] >= 0)[:, None, None, :]  # (B, 1, 1, S0)
        step.mask = torch.cat([old.expand(B, 1, T, self.tree_start),
                               self.visible[None, None].expand(B, 1, T, -1)], dim=-1)
        return step

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: KVStep) -> torch.Tensor:
        return self.cache.attend(layer, q, k, v, step)


def keep_path(cache: KVCache, start: int, n_pending: int, path: list[int]) -> None:
    """After a tree forward that began at slot ``start``: keep the pending tokens and the
    accepted ``path`` (node indices) in consecutive slots, forget every other node."""
    first = start + n_pending  # slot of node 0
    src = torch.tensor([first + i for i in path], dtype=torch.long)
    dst = torch.arange(first, first + len(path))
    if len(path) and not torch.equal(src, dst):
        cache.k[:, :, :, dst] = cache.k[:, :, :, src]  # (L, B, H_kv, n, D): index_put copies
        cache.v[:, :, :, dst] = cache.v[:, :, :, src]
        cache.kpos[:, dst] = cache.kpos[:, src]
    cache.rollback(first + len(path))


def verify_tree_greedy(choices: list[int], tree: TokenTree) -> tuple[list[int], int]:
    """choices[0]: the target's argmax after the root; choices[1 + i]: after node i.
    Returns (the accepted path, the next token): greedy decoding of the target."""
    path, node = [], -1
    while True:
        want = choices[node + 1]
        nxt = next((c for c in tree.children(node) if tree.tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt


def verify_tree(p: torch.Tensor, tree: TokenTree, gen: torch.Generator | None
                ) -> tuple[list[int], int]:
    """Recursive rejection sampling over siblings; p (1 + N, V): the target's
    distributions after the root and after each node. Returns (accepted path, next)."""
    path, node = [], -1
    while True:
        dist, accepted = p[node + 1].clone(), None  # (V,)
        for c in tree.children(node):
            x = tree.tokens[c]
            q_c = None if tree.q is None else tree.q[c]
            q_x = 1.0 if q_c is None else max(float(q_c[x]), 1e-30)
            if torch.rand((), generator=gen).item() < min(1.0, float(dist[x]) / q_x):
                accepted = c
                break
            if q_c is None:  # the residual of a one-hot proposal: p without x
                residual = dist.clone()
                residual[x] = 0.0
            else:
                residual = (dist - q_c).clamp(min=0)
            if residual.sum() > 0:  # zero only when p equalled q, where x is always kept
                dist = residual / residual.sum()
        if accepted is None:  # every child rejected, or a leaf: draw from what is left
            return path, int(draw(dist[None], gen))
        path.append(accepted)
        node = accepted
