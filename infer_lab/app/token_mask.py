"""Which tokens may come next: a character DFA lifted to masks over a vocabulary (Willard &
Louf 2023, "Efficient Guided Generation for LLMs"; the token trie of lm-format-enforcer).

Token t is allowed in DFA state q iff delta*(q, text(t)) exists: the DFA survives every
character of the token (dead states are pruned, so it can then still reach acceptance).
Checking each token alone costs sum |text(t)| steps per state; a trie of the token texts
shares their prefixes, and the walk stops at the first character the DFA refuses, so one
step prunes a whole subtree ('{"', '{"a', '{"ab', ...).

The trie is keyed by DFA *symbols*, not characters: characters the DFA never tells apart
(inside a JSON string, all letters) share one path, so "hello" and "world" are walked once.
A state's walk gives its groups, next state -> the token ids that lead there, and from them:

* the mask (V,) bool, built the first time a state is visited and cached;
* the fewest *tokens* from each state to acceptance, breadth-first over the token graph
  (:meth:`TokenMasks.min_tokens`): a budget of n tokens allows only tokens whose next state
  can still be finished in n - 1, so generation never runs out of room mid-answer.

Token texts are the ids decoded one at a time. Byte-level BPE (the zoo's tokenizer and
SmolLM2's GGUF one) decodes a sequence to the concatenation of its tokens' texts, except
that a token holding part of a multi-byte UTF-8 character decodes alone to U+FFFD: such
tokens are never allowed (the DFA reads whole characters), so a character that exists only
as byte pieces cannot be written. Special tokens (<|im_end|>) are never text; EOS is
allowed exactly in accepting states.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from ..tokenizer import Tokenizer
from .regex_fsm import DFA

INF = float("inf")
PROBE = 'x = {"a": [1, 2.5e-3], "b": null}\n\tif not ok:  # done'  # checks decode = concat


@dataclass(frozen=True)
class Vocabulary:
    """Each token id's text, or None where a constraint must never pick it."""

    texts: tuple[str | None, ...]
    eos_id: int | None
    size: int  # the mask length: the model's logits width (may exceed len(texts))

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, size: int | None = None) -> Vocabulary:
        """The texts of a byte-level tokenizer; ValueError where tokens do not decode alone
        (SentencePiece drops a leading "▁" when a token is decoded by itself)."""
        n = tokenizer.vocab_size
        size = n if size is None else size
        if size < n:
            raise ValueError(f"mask size {size} < the tokenizer's {n} tokens")
        # The wrapper has no public list of special tokens yet, so read the wrapped one's.
        special = {i for i, t in tokenizer._tok.get_added_tokens_decoder().items() if t.special}
        texts = tuple(None if i in special else tokenizer.decode([i]) for i in range(n))
        texts = tuple(None if t is None or "\ufffd" in t or t == "" else t for t in texts)
        ids = tokenizer.encode(PROBE)
        if "".join(texts[i] or "" for i in ids) != tokenizer.decode(ids):
            raise ValueError("this tokenizer's tokens do not decode one at a time to text "
                             "that concatenates (not byte-level BPE?); token masks need it")
        return cls(texts, tokenizer.eos_id, size)


class TokenMasks:
    """Allowed next tokens per DFA state, for one DFA and one vocabulary; a
    :class:`~.constrained.Constraint` whose states are the DFA's."""

    def __init__(self, dfa: DFA, vocab: Vocabulary, device: torch.device | str = "cpu"):
        self.dfa, self.vocab, self.device = dfa, vocab, torch.device(device)
        self.start, self.eos_id = dfa.start, vocab.eos_id
        self._kids: list[dict[int, int]] = [{}]  # trie node -> {symbol: child node}
        self._ends: list[list[int]] = [[]]  # trie node -> ids of the tokens that end there
        for tid, text in enumerate(vocab.texts):
            if text is None:
                continue
            node = 0
            for c in text:
                sym = dfa.symbol(c)
                child = self._kids[node].get(sym)
                if child is None:
                    child = self._kids[node][sym] = len(self._kids)
                    self._kids.append({})
                    self._ends.append([])
                node = child
            self._ends[node].append(tid)
        self._groups: dict[int, dict[int, list[int]]] = {}
        self._masks: dict[tuple[int, float], torch.Tensor] = {}
        self._dist: dict[int, float] = {}  # min tokens, for every state explored so far
        self._rev: dict[int, set[int]] = {}  # the token graph backwards, over explored states

    @property
    def trie_nodes(self) -> int:
        return len(self._kids)

    def groups(self, state: int) -> dict[int, list[int]]:
        """Next state -> the token ids that lead there from ``state`` (walked once, cached)."""
        if state in self._groups:
            return self._groups[state]
        out: dict[int, list[int]] = {}
        trans, kids, ends = self.dfa.trans, self._kids, self._ends
        stack = [(0, state)]
        while stack:
            node, q = stack.pop()
            here, row = kids[node], trans[q]
            # Iterate over the smaller side: a node's children or the state's ways out.
            if len(here) <= len(row):
                pairs = [(child, row.get(sym)) for sym, child in here.items()]
            else:
                pairs = [(here.get(sym), nq) for sym, nq in row.items()]
            for child, nq in pairs:
                if child is None or nq is None:  # the DFA dies: prune the whole subtree
                    continue
                if ends[child]:
                    out.setdefault(nq, []).extend(ends[child])
                if kids[child]:
                    stack.append((child, nq))
        self._groups[state] = out
        return out

    def min_tokens(self, state: int) -> float:
        """Fewest tokens (not counting EOS) from ``state`` to an accepting state; inf: none."""
        if state not in self._dist:
            self._explore(state)
        return self._dist[state]

    def _explore(self, state: int) -> None:
        """Walk every state tokens reach from ``state``, then redo the backward BFS."""
        queue = deque([state])
        self._rev.setdefault(state, set())
        while queue:
            q = queue.popleft()
            for nq in self.groups(q):
                if nq not in self._rev:
                    self._rev[nq] = set()
                    queue.append(nq)
                self._rev[nq].add(q)
        dist = {q: 0.0 for q in self._rev if self.dfa.accepting[q]}
        queue = deque(dist)
        while queue:
            q = queue.popleft()
            for p in self._rev[q]:
                if p not in dist:
                    dist[p] = dist[q] + 1
                    queue.append(p)
        self._dist = {q: dist.get(q, INF) for q in self._rev}

    def mask(self, state: int, budget: int | None = None) -> torch.Tensor:
        """(V,) bool: the tokens allowed in ``state`` that still finish within ``budget``
        tokens (this one included), EOS if ``state`` accepts; cached per state."""
        groups = self.groups(state)
        limit = INF if budget is None else budget - 1
        need = {nq: self.min_tokens(nq) for nq in groups}
        # A budget past every finishable group's need changes nothing: one cache entry.
        top = max((n for n in need.values() if n < INF), default=0)
        key = (state, limit if limit < top else INF)
        m = self._masks.get(key)
        if m is None:
            ids = [t for nq, ts in groups.items() if need[nq] <= limit and need[nq] < INF
                   for t in ts]
            m = torch.zeros(self.vocab.size, dtype=torch.bool)
            if ids:
                m[torch.tensor(ids)] = True
            if self.eos_id is not None and self.dfa.accepting[state] and limit >= 0:
                m[self.eos_id] = True
            m = self._masks[key] = m.to(self.device)
        return m

    def advance(self, state: int, token_id: int) -> int:
        """The state after ``token_id`` (EOS leaves it where it is); ValueError if refused."""
        if token_id == self.eos_id:
            if not self.dfa.accepting[state]:
                raise ValueError(f"EOS in state {state}, which does not accept")
            return state
        text = self.vocab.texts[token_id] if 0 <= token_id < len(self.vocab.texts) else None
        nxt = None if text is None else self.dfa.walk(text, state)
        if nxt is None:
            raise ValueError(f"token {token_id} ({text!r}) is not allowed in state {state}")
        return nxt

    def is_accepting(self, state: int) -> bool:
        return self.dfa.accepting[state]
