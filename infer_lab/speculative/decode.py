"""speculative_decode: draft k tokens, verify them in one target forward, roll back.

One round: the draft proposes up to k tokens; the target scores the pending token(s)
and the proposal in ONE forward (as cheap as a decode step while decoding is
memory-bound); the acceptance rule keeps a prefix and picks the next token; the target's
cache rolls back past the rejected tokens and the draft is told what was kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import observe
from ..generate import (GREEDY, Sampling, check_decoding, check_prompts, logits_to_probs,
                        make_generator)
from ..kv_cache import KVCache
from ..model import Transformer
from ..validate import integer
from .drafts import Drafter, ModelDrafter
from .stats import SpecStats
from .verify import verify, verify_greedy


@torch.inference_mode()
def speculative_decode(target: Transformer, draft: Transformer | Drafter, prompt: list[int],
                       max_new_tokens: int,
                       k: int = 4, sampling: Sampling = GREEDY, eos_id: int | None = None,
                       observers: Sequence[observe.Observer] | None = None,
                       rule: Callable | None = None, constraint: Any = None
                       ) -> tuple[list[int], SpecStats]:
    """Generate up to ``max_new_tokens`` for one prompt; returns (tokens, statistics).

    ``observers`` are told of the request, its tokens and its acceptance (None: the
    defaults of :mod:`infer_lab.observe`). ``rule`` is the acceptance rule of sampled
    decoding, with :func:`~infer_lab.speculative.verify.verify`'s signature
    ``(p, q, draft, greedy, gen) -> (n accepted, next token)`` (None: ``verify``), so a
    lab can run a learner's; greedy decoding always keeps the longest agreeing prefix.

    ``constraint``: constrained output (:class:`infer_lab.app.constrained.Constraint`:
    ``start``, ``mask(state, budget)``, ``advance(state, token)``; it needs ``eos_id``).
    The proposal is cut before its first token the constraint refuses (that token would
    be rejected: the masked target gives it probability 0), and the target's logits at
    each position are masked with the state the kept draft tokens lead to, so the output
    is the constrained target's, greedy or sampled.
    """
    k = integer("k (draft tokens per step)", k, lo=1)
    prompt = check_prompts(target, [prompt], max_new_tokens)[0]
    check_decoding(target, sampling, eos_id)
    if constraint is not None and eos_id is None:
        raise ValueError("constrained speculative decoding needs eos_id: EOS ends the answer")
    state = None if constraint is None else constraint.start
    if isinstance(draft, Transformer):
        draft = ModelDrafter(draft, sampling)
    for m in draft.models():
        _check_pair(target, m)
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
        if constraint is not None:
            proposal, q, masks = _constrain(constraint, state, proposal, q,
                                            max_new_tokens - len(out))
        t1 = time.perf_counter()
        x = torch.tensor([pending + proposal], device=target.device)
        logits = target(x, cache)[0, len(pending) - 1:]  # (n+1, V)
        if constraint is not None:
            logits = logits.masked_fill(~masks.to(logits.device), float("-inf"))
        if sampling.greedy:  # accept while the argmax agrees: no probabilities needed
            n, nxt = verify_greedy(logits.argmax(-1).tolist(), proposal)
        else:
            accept = verify if rule is None else rule  # looked up per call: tests patch it
            n, nxt = accept(logits_to_probs(logits.float(), sampling), q, proposal, False, gen)
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
                if constraint is not None and tok != eos_id:
                    state = constraint.advance(state, tok)
        if trace:
            trace.token(len(out) - before)
    if trace:
        trace.done(spec=stats)
    return out, stats


def _constrain(constraint: Any, state: int, proposal: list[int], q: torch.Tensor | None,
               budget: int) -> tuple[list[int], torch.Tensor | None, torch.Tensor]:
    """The proposal's prefix the constraint allows, its q rows, and the (n+1, V) masks of
    the states before each kept token and after the last."""
    masks = [constraint.mask(state, budget)]  # (V,) each
    for i, tok in enumerate(proposal):
        if not bool(masks[-1][tok]) or tok == constraint.eos_id:
            proposal = proposal[:i]  # nothing after a refused token (or the end) counts
            break
        state = constraint.advance(state, tok)
        masks.append(constraint.mask(state, budget - i - 1))
    q = None if q is None else q[:len(proposal)]
    return proposal, q, torch.stack(masks[:len(proposal) + 1])


def _check_pair(target: Transformer, draft: Transformer) -> None:
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft vocabulary ({draft.config.vocab_size}) differs from the "
                         f"target's ({target.config.vocab_size}): they must share a tokenizer")
    if draft.device != target.device:
        raise ValueError(f"draft is on {draft.device} but target is on {target.device}: "
                         "move both to one device")
