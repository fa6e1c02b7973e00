"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A cheap *draft* proposes k tokens d_1..d_k with probabilities q; the *target* scores all
k+1 positions in ONE forward pass (as cheap as a decode step when decoding is
memory-bound) giving p. Each d_i is accepted with probability min(1, p(d_i) / q(d_i));
at the first rejection a token is drawn from the residual norm(max(0, p - q)); when all
k are accepted a bonus token comes from p_{k+1}. The output has exactly the target's
distribution, and with greedy sampling it is token for token the target's greedy output.

Expected tokens per target call, with acceptance rate a:  (1 - a^(k+1)) / (1 - a),
so with a draft costing c target-steps per token the speedup is
(1 - a^(k+1)) / ((1 - a)(k c + 1)).

Drafts are objects with ``start(prompt)``, ``propose(k) -> (tokens, q | None)`` and
``commit(accepted, next_token)``: a smaller model (:class:`ModelDrafter`) or an n-gram
match in the text so far (:class:`PromptLookupDrafter`, "prompt lookup decoding";
q = None means a deterministic proposal, i.e. q is one-hot), or a quantized copy of the
target itself (:func:`quantized_draft`, self-speculation).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import observe
from .generate import (GREEDY, Sampling, check_decoding, check_prompts, draw,
                       logits_to_probs, make_generator, sample_with_probs)
from .validate import integer
from .kv_cache import KVCache
from .model import Transformer


@dataclass
class SpecStats:
    """What one speculative_decode call did."""

    target_calls: int = 0
    proposed: int = 0
    accepted: int = 0
    rejected: int = 0  # target calls that rejected a draft token (the others took all)
    accepted_at: list[int] = field(default_factory=list)  # accepts by draft position
    proposed_at: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0
    target_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over proposed draft tokens (falls with k: tokens after a rejection
        count as proposed but never get a chance)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability, the alpha of the speedup formula.

        Each draft token is judged only if all before it were accepted; with independent
        accepts of probability alpha the maximum-likelihood estimate is
        accepted / (accepted + rejections). Unlike :attr:`acceptance_rate` it does not
        depend on k, so it can be compared across k and plugged into
        :func:`theoretical_speedup`.
        """
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """Mean accepted draft tokens + 1 (the corrected or bonus token) per target call."""
        return (self.accepted + self.target_calls) / self.target_calls if self.target_calls else 0.0

    def acceptance_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at, self.proposed_at)]

    def add(self, other: SpecStats) -> SpecStats:
        """Add another call's counts and times into this one (e.g. over prompts)."""
        for f in ("target_calls", "proposed", "accepted", "rejected", "draft_seconds",
                  "target_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        for i, (a, n) in enumerate(zip(other.accepted_at, other.proposed_at)):
            if i == len(self.proposed_at):
                self.accepted_at.append(0)
                self.proposed_at.append(0)
            self.accepted_at[i] += a
            self.proposed_at[i] += n
        return self

    def record(self, n_proposed: int, n_accepted: int) -> None:
        self.target_calls += 1
        self.proposed += n_proposed
        self.accepted += n_accepted
        self.rejected += int(n_accepted < n_proposed)
        while len(self.proposed_at) < n_proposed:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for i in range(n_proposed):
            self.proposed_at[i] += 1
            self.accepted_at[i] += int(i < n_accepted)


def theoretical_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. eq. 1: expected speedup for acceptance rate alpha and cost ratio c."""
    if alpha >= 1.0:
        return (k + 1) / (k * c + 1)
    return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))


def verify(p: torch.Tensor, q: torch.Tensor | None, draft: list[int], greedy: bool,
           gen: torch.Generator | None) -> tuple[int, int]:
    """Accept a prefix of ``draft``; return (n accepted, the next token).

    p: (n+1, V) target probabilities at each draft position and one past it.
    q: (n, V) draft probabilities, or None for a deterministic (one-hot) proposal.
    """
    if greedy:  # one greedy rule: the longest prefix that agrees with the argmax
        return verify_greedy(p.argmax(-1).tolist(), draft)
    for i, d in enumerate(draft):
        q_d = 1.0 if q is None else float(q[i, d])
        if torch.rand((), generator=gen).item() < min(1.0, float(p[i, d]) / q_d):
            continue
        q_i = torch.nn.functional.one_hot(torch.tensor(d), p.shape[-1]).to(p) if q is None else q[i]
        residual = (p[i] - q_i).clamp(min=0)
        residual = residual / residual.sum()
        return i, int(draw(residual[None], gen))
    return len(draft), int(draw(p[len(draft)][None], gen))  # the bonus token


def verify_greedy(choices: list[int], draft: list[int]) -> tuple[int, int]:
    """Greedy verification: ``choices`` are the target's argmax at each draft position
    and one past it (n+1); accept the longest prefix of ``draft`` that agrees."""
    n = 0
    while n < len(draft) and draft[n] == choices[n]:
        n += 1
    return n, choices[n]


class ModelDrafter:
    """A smaller model proposes tokens autoregressively, with its own KV cache."""

    def __init__(self, model: Transformer, sampling: Sampling = GREEDY):
        self.model, self.sampling = model, sampling
        self.gen: torch.Generator | None = None

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.cache = KVCache.for_model(self.model, 1, max_len)
        self.pending = list(prompt)  # tokens not yet in the draft's cache
        self.base: int | None = None
        self.gen = gen

    @torch.inference_mode()
    def propose(self, k: int) -> tuple[list[int], torch.Tensor | None]:
        if k == 0:
            self.base = None
            return [], None
        tokens, probs = [], []
        x = torch.tensor([self.pending], device=self.model.device)
        self.base = self.cache.length + len(self.pending)  # cache length once pending is in
        for _ in range(k):
            logits = self.model(x, self.cache, last_only=True)[:, -1]  # (1, V)
            # Greedy returns no q (greedy verification never reads it: no softmax).
            tok, q = sample_with_probs(logits.float(), self.sampling, self.gen)
            t = int(tok)
            if q is not None:
                probs.append(q[0])  # (V,)
            tokens.append(t)
            x = torch.tensor([[t]], device=self.model.device)
        return tokens, torch.stack(probs) if probs else None

    def commit(self, accepted: list[int], next_token: int) -> None:
        if self.base is None:  # this drafter proposed nothing (another one may have)
            self.pending += accepted + [next_token]
            return
        # The cache holds pending + draft[:-1]; keep pending + the accepted ones.
        keep = self.base + len(accepted)
        if keep <= self.cache.length:
            self.cache.rollback(keep)
            self.pending = [next_token]
        else:  # all k accepted: the last draft token never went through the draft
            self.pending = [accepted[-1], next_token]


class PromptLookupDrafter:
    """Propose the tokens that followed the latest earlier occurrence of the last n-gram.

    No draft model: code and edits repeat their context, so the continuation of a
    repeated n-gram is often right (Saxena 2023, "prompt lookup decoding").
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.tokens = list(prompt)

    def propose(self, k: int) -> tuple[list[int], None]:
        t = self.tokens
        if k == 0:
            return [], None
        for n in range(min(self.max_ngram, len(t) - 1), self.min_ngram - 1, -1):
            tail = t[-n:]
            for s in range(len(t) - n - 1, -1, -1):  # latest match first
                if t[s:s + n] == tail:
                    return t[s + n:s + n + k], None
        return [], None

    def commit(self, accepted: list[int], next_token: int) -> None:
        self.tokens += accepted + [next_token]


class HybridDrafter:
    """Prompt lookup when the text so far has a long enough n-gram match, else a model.

    A lookup draft costs nothing, so it is tried first; the draft model runs only where
    no earlier n-gram matches. Both see every committed token, so either can take the
    next round (in the spirit of REST, He et al. 2023, which retrieves drafts and falls
    back to decoding).
    """

    def __init__(self, model: Transformer | ModelDrafter, lookup: PromptLookupDrafter | None = None,
                 sampling: Sampling = GREEDY):
        self.model = model if isinstance(model, ModelDrafter) else ModelDrafter(model, sampling)
        self.lookup = lookup or PromptLookupDrafter(max_ngram=3, min_ngram=2)
        self.lookup_rounds = self.model_rounds = 0

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        self.model.start(prompt, max_len, gen)
        self.lookup.start(prompt, max_len, gen)

    def propose(self, k: int) -> tuple[list[int], torch.Tensor | None]:
        tokens, _ = self.lookup.propose(k)
        if tokens:
            self.model.base = None  # the model drafter sits this round out
            self.lookup_rounds += 1
            return tokens, None
        self.model_rounds += 1
        return self.model.propose(k)

    def commit(self, accepted: list[int], next_token: int) -> None:
        self.lookup.commit(accepted, next_token)
        self.model.commit(accepted, next_token)


@torch.inference_mode()
def speculative_decode(target: Transformer, draft: Transformer | ModelDrafter |
                       PromptLookupDrafter | HybridDrafter, prompt: list[int], max_new_tokens: int,
                       k: int = 4, sampling: Sampling = GREEDY, eos_id: int | None = None,
                       observers: Sequence[observe.Observer] | None = None
                       ) -> tuple[list[int], SpecStats]:
    """Generate up to ``max_new_tokens`` for one prompt; returns (tokens, statistics).

    ``observers`` are told of the request, its tokens and its acceptance (None: the
    defaults of :mod:`infer_lab.observe`).
    """
    k = integer("k (draft tokens per step)", k, lo=1)
    prompt = check_prompts(target, [prompt], max_new_tokens)[0]
    check_decoding(target, sampling, eos_id)
    if isinstance(draft, Transformer):
        draft = ModelDrafter(draft, sampling)
    for d in (draft, getattr(draft, "model", None)):
        if isinstance(d, ModelDrafter):
            _check_pair(target, d.model)
    max_len = len(prompt) + max_new_tokens + k + 1
    max_len = min(max_len, target.config.max_seq_len)
    gen = make_generator(sampling, target.device)
    cache = KVCache.for_model(target, 1, max_len)
    stats, out = SpecStats(), []
    trace = observe.request(observers, "speculative", k=k)  # None unless one listens
    draft.start(prompt, max_len, gen)
    pending = list(prompt)  # tokens not yet in the target's cache
    while len(out) < max_new_tokens and not (out and out[-1] == eos_id):
        room = min(k, max_new_tokens - len(out) - 1,
                   target.config.max_seq_len - cache.length - len(pending))
        t0 = time.perf_counter()
        proposal, q = draft.propose(max(room, 0))
        t1 = time.perf_counter()
        x = torch.tensor([pending + proposal], device=target.device)
        logits = target(x, cache)[0, len(pending) - 1:]  # (n+1, V)
        if sampling.greedy:  # accept while the argmax agrees: no probabilities needed
            n, nxt = verify_greedy(logits.argmax(-1).tolist(), proposal)
        else:
            n, nxt = verify(logits_to_probs(logits.float(), sampling), q, proposal, False, gen)
        stats.target_seconds += time.perf_counter() - t1
        stats.draft_seconds += t1 - t0
        stats.record(len(proposal), n)
        cache.rollback(cache.length - (len(proposal) - n))  # drop rejected draft tokens
        accepted = proposal[:n]
        draft.commit(accepted, nxt)
        pending = [nxt]
        before = len(out)
        for tok in accepted + [nxt]:
            if len(out) < max_new_tokens and not (out and out[-1] == eos_id):
                out.append(tok)
        if trace:
            trace.token(len(out) - before)
    if trace:
        trace.done(spec=stats)
    return out, stats


def quantized_draft(target: Transformer, method: str = "int8") -> Transformer:
    """Self-speculation: a quantized copy of the target drafts for the target itself.

    Any scheme of :mod:`infer_lab.quant.catalog` by name ("int8", "int4-g64",
    "int8 dynamic (fbgemm)", "q4_k", ...). The copy agrees with the target far more often
    than a smaller model does (high alpha), but it only pays off when it is also much
    cheaper per token (low c): on a GPU, where decoding is memory-bound and 4-bit weights
    are read 4x faster; not for a tiny model on a CPU, where per-layer overhead dominates.
    """
    from .quant.catalog import build

    return build(target, method)


def _check_pair(target: Transformer, draft: Transformer) -> None:
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.config.vocab_size}) differs from the "
                         f"target's ({target.config.vocab_size}): they must share a tokenizer")
    if draft.device != target.device:
        raise ValueError(f"draft is on {draft.device} but target is on {target.device}: "
                         "move both to one device")
