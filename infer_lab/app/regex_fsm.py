"""A syntax tree -> a DFA over characters (Thompson 1968; Rabin & Scott 1959; Hopcroft 1971).

    tree --Thompson--> NFA --subset construction--> DFA --prune dead, merge equal (Hopcroft)-->

Thompson's construction turns each piece of syntax into an NFA fragment with one entry and
one exit, glued by epsilon moves (a* loops its fragment back, a|b forks to both). Subset
construction makes it deterministic: a DFA state is a set S of NFA states closed under
epsilon moves, and delta(S, c) = eps-closure(union of move(s, c) for s in S).

The DFA reads *symbols*: the partition of code points into ranges that no class in the
pattern splits (``[a-z]`` is one symbol, not 26; everything outside the pattern's classes is
one more). A constraint needs more than "does it match": which states can still reach
acceptance (pruned here: from a dead end :meth:`DFA.step` returns None), and the fewest
characters from each state to acceptance (:attr:`DFA.min_chars`), which bounds how many
tokens an answer needs. Syntax and semantics: :mod:`.regex_parse` (``re.fullmatch`` with
``re.ASCII``).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass

from .regex_parse import MAX_CHAR, Intervals, Node, Parser, escape

__all__ = ["DFA", "compile_regex", "escape"]
MAX_NFA_STATES = 500_000

class _NFA:
    """Thompson's NFA: per state, epsilon targets and (intervals, target) character edges."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[Intervals, int]]] = []

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise ValueError(f"regex too large: over {MAX_NFA_STATES} NFA states")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node) -> tuple[int, int]:
        """The fragment (entry, exit) of ``node``."""
        kind = node[0]
        if kind == "set":
            a, b = self.new(), self.new()
            self.edges[a].append((node[1], b))
            return a, b
        if kind == "alt":
            a, b = self.new(), self.new()
            for child in node[1]:
                s, e = self.build(child)
                self.eps[a].append(s)
                self.eps[e].append(b)
            return a, b
        a = b = self.new()
        if kind == "cat":
            for child in node[1]:
                s, e = self.build(child)
                self.eps[b].append(s)
                b = e
            return a, b
        _, child, lo, hi = node  # rep: lo copies in a row, then a star or hi - lo optional ones
        for _ in range(lo):
            s, e = self.build(child)
            self.eps[b].append(s)
            b = e
        out = self.new()
        if hi is None:  # a star: enter the loop or skip it; at its end, loop again or leave
            s, e = self.build(child)
            self.eps[b] += [s, out]
            self.eps[e] += [s, out]
            return a, out
        for _ in range(hi - lo):  # optional copies; leaving early jumps straight to the exit
            s, e = self.build(child)
            self.eps[b] += [s, out]
            b = e
        self.eps[b].append(out)
        return a, out

    def closure(self, states: set[int]) -> frozenset[int]:
        stack, seen = list(states), set(states)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)


@dataclass(frozen=True)
class DFA:
    """A deterministic automaton over symbols (ranges of code points); every state is live."""

    pattern: str
    bounds: tuple[int, ...]  # symbol k is the code points [bounds[k], bounds[k + 1])
    trans: tuple[dict[int, int], ...]  # state -> {symbol: next state}; absent = dead
    accepting: tuple[bool, ...]
    min_chars: tuple[float, ...]  # fewest characters from a state to acceptance (inf: never)
    start: int = 0

    @property
    def states(self) -> range:
        return range(len(self.trans))

    def symbol(self, char: str) -> int:
        return bisect.bisect_right(self.bounds, ord(char)) - 1

    def step(self, state: int, char: str) -> int | None:
        """The state after ``char``, or None when no accepted string continues this way."""
        return self.trans[state].get(self.symbol(char))

    def walk(self, text: str, state: int | None = None) -> int | None:
        state = self.start if state is None else state
        for c in text:
            state = self.trans[state].get(self.symbol(c))
            if state is None:
                return None
        return state

    def is_accepting(self, state: int) -> bool:
        return self.accepting[state]

    def can_accept(self, state: int) -> bool:
        """False only for the start state of an empty language (pruning removed the rest)."""
        return self.min_chars[state] < float("inf")

    def fullmatch(self, text: str) -> bool:
        state = self.walk(text)
        return state is not None and self.accepting[state]

    def edges(self, state: int) -> list[tuple[int, int, int]]:
        """(first code point, last code point, next state) of each way out of ``state``."""
        top = (*self.bounds[1:], MAX_CHAR + 1)
        return [(self.bounds[k], top[k] - 1, t) for k, t in sorted(self.trans[state].items())]


def _determinize(nfa: _NFA, entry: int, exit_: int, max_states: int
                 ) -> tuple[list[int], list[dict[int, int]], list[bool]]:
    cuts = {0} | {x for es in nfa.edges for cs, _ in es for lo, hi in cs for x in (lo, hi + 1)}
    bounds = sorted(c for c in cuts if c <= MAX_CHAR)
    # Each edge's intervals as the symbols they cover (interval ends are symbol bounds).
    sym_edges = [[(range(bisect.bisect_left(bounds, lo), bisect.bisect_left(bounds, hi + 1)), t)
                  for cs, t in es for lo, hi in cs] for es in nfa.edges]
    start = nfa.closure({entry})
    index, trans, queue = {start: 0}, [{}], deque([start])
    closures: dict[frozenset[int], frozenset[int]] = {}
    while queue:
        S = queue.popleft()
        moves: dict[int, set[int]] = {}
        for s in S:
            for syms, t in sym_edges[s]:
                for k in syms:
                    moves.setdefault(k, set()).add(t)
        row = trans[index[S]]
        for k, targets in moves.items():
            key = frozenset(targets)
            T = closures.get(key) or closures.setdefault(key, nfa.closure(targets))
            if T not in index:
                if len(index) >= max_states:
                    raise ValueError(f"regex too large: over {max_states} DFA states")
                index[T] = len(trans)
                trans.append({})
                queue.append(T)
            row[k] = index[T]
    return bounds, trans, [exit_ in S for S in index]


def _minimize(trans: list[dict[int, int]], accepting: list[bool]
              ) -> tuple[list[dict[int, int]], list[bool]]:
    """Drop states that cannot reach acceptance, merge equivalent ones; the start becomes 0."""
    rev: list[list[int]] = [[] for _ in trans]
    for s, row in enumerate(trans):
        for t in row.values():
            rev[t].append(s)
    live = {s for s, a in enumerate(accepting) if a}
    stack = list(live)
    while stack:
        for s in rev[stack.pop()]:
            if s not in live:
                live.add(s)
                stack.append(s)
    if 0 not in live:  # the empty language: one state, no way out
        return [{}], [False]
    # Hopcroft (1971): split each block by "steps into block A on symbol k or not", queueing
    # the smaller half, so a state is looked at O(log n) times (Moore's rounds are O(n) on
    # a chain such as .{0,300}). A missing transition goes to a sink no live state equals.
    sink = len(trans)
    syms = sorted({k for s in live for k in trans[s]})
    inv: dict[tuple[int, int], list[int]] = {(k, sink): [sink] for k in syms}
    for s in live:
        for k in syms:
            t = trans[s].get(k)
            inv.setdefault((k, t if t in live else sink), []).append(s)
    acc = {s for s in live if accepting[s]}
    blocks = [acc, (live - acc) | {sink}]
    block_of = {s: int(s not in acc) for s in (*live, sink)}
    work = {0 if len(acc) <= len(blocks[1]) else 1}
    while work:
        members = list(blocks[work.pop()])
        for k in syms:
            hit: dict[int, list[int]] = {}  # block -> its states that step into members on k
            for q in members:
                for p in inv.get((k, q), ()):
                    hit.setdefault(block_of[p], []).append(p)
            for b, ps in hit.items():
                if len(ps) == len(blocks[b]):
                    continue
                blocks[b] -= set(ps)
                blocks.append(set(ps))
                for p in ps:
                    block_of[p] = len(blocks) - 1
                small = len(ps) <= len(blocks[b])
                work.add(len(blocks) - 1 if b in work or small else b)
    block = {s: block_of[s] for s in live}
    order = {block[0]: 0}  # number the blocks in BFS order from the start
    queue = deque([0])
    reps = {0: 0}
    while queue:
        s = queue.popleft()
        for t in trans[s].values():
            if t in live and block[t] not in order:
                order[block[t]] = len(order)
                reps[order[block[t]]] = t
                queue.append(t)
    out = [{k: order[block[t]] for k, t in trans[reps[i]].items() if t in live}
           for i in range(len(order))]
    return out, [accepting[reps[i]] for i in range(len(order))]


def compile_regex(pattern: str, max_states: int = 20_000) -> DFA:
    """The minimal DFA for ``pattern`` (full-match semantics); ValueError names the position."""
    if not isinstance(pattern, str):
        raise TypeError(f"a regex must be a str, got {type(pattern).__name__}")
    nfa = _NFA()
    entry, exit_ = nfa.build(Parser(pattern).parse())
    bounds, trans, accepting = _determinize(nfa, entry, exit_, max_states)
    trans, accepting = _minimize(trans, accepting)
    dist = [float("inf")] * len(trans)  # BFS backwards from the accepting states
    rev: list[list[int]] = [[] for _ in trans]
    for s, row in enumerate(trans):
        for t in row.values():
            rev[t].append(s)
    queue = deque(s for s, a in enumerate(accepting) if a)
    for s in queue:
        dist[s] = 0
    while queue:
        t = queue.popleft()
        for s in rev[t]:
            if dist[s] == float("inf"):
                dist[s] = dist[t] + 1
                queue.append(s)
    return DFA(pattern, tuple(bounds), tuple(trans), tuple(accepting), tuple(dist))
