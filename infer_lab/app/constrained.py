"""Constrained decoding by logit masking: the model writes only what a regex or a JSON
schema accepts (Willard & Louf 2023, "Efficient Guided Generation for LLMs"; Outlines,
lm-format-enforcer and llama.cpp grammars work the same way).

A constraint is an automaton over tokens. In state q it allows the tokens m(q) in {0,1}^V,
and each step masks the logits before the package's one sampling path picks a token:

    z_i <- z_i where m(q_i, n - i) else -inf;   t_i = sample(z_i);   q_{i+1} = advance(q_i, t_i)

The budget rule: with n - i tokens left (this one included) a token is allowed only if its
next state can reach acceptance in n - i - 1 more, so the answer always completes within
``max_new_tokens`` (the text is cut nowhere); when even the shortest accepted answer needs
more tokens than that, :func:`constrained_generate` raises before running the model. EOS is
allowed exactly in accepting states, and when it is the only choice it is written without a
forward pass.

Masking is not free: a mask lookup (built once per state, cached), a ``masked_fill`` over V
logits and ``advance`` (the token's characters through the DFA) per token;
:class:`StepTimes` puts those next to the forward they ride on.

Speculative decoding can keep a drafted token only if the constraint allows it:
:func:`check_draft` counts how many drafted tokens in a row the constraint accepts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..generate import (GREEDY, Sampling, check_decoding, check_prompts, decode_one_token,
                        make_generator, prefill, sample)
from ..hardware import synchronize
from ..kv_cache import KVCache
from ..model import Transformer
from ..tokenizer import Tokenizer
from .json_schema import schema_to_regex
from .regex_fsm import compile_regex
from .token_mask import TokenMasks, Vocabulary

__all__ = ["Constraint", "ConstrainedOutput", "Cursor", "StepTimes", "check_draft",
           "constrained_generate", "regex_constraint", "schema_constraint"]


class Constraint(Protocol):
    """What the decoding loop needs from a constraint (:class:`~.token_mask.TokenMasks`
    is one; a learner's own automaton is another)."""

    start: int
    eos_id: int | None

    def mask(self, state: int, budget: int | None = None) -> torch.Tensor:
        """(V,) bool: the tokens allowed in ``state`` that still finish in ``budget`` tokens."""
        ...

    def advance(self, state: int, token_id: int) -> int:
        """The state after ``token_id``; ValueError if the constraint refuses it."""
        ...

    def is_accepting(self, state: int) -> bool: ...

    def min_tokens(self, state: int) -> float:
        """The fewest tokens (EOS not counted) from ``state`` to acceptance; inf: never."""
        ...


def regex_constraint(pattern: str, tokenizer: Tokenizer, vocab_size: int | None = None,
                     device: torch.device | str = "cpu",
                     vocab: Vocabulary | None = None) -> TokenMasks:
    """Token masks for text that fully matches ``pattern``. ``vocab_size``: the mask length
    (the model's logits width; default the tokenizer's). Pass ``vocab`` to reuse one."""
    vocab = vocab or Vocabulary.from_tokenizer(tokenizer, vocab_size)
    return TokenMasks(compile_regex(pattern), vocab, device)


def schema_constraint(schema: dict[str, Any], tokenizer: Tokenizer,
                      vocab_size: int | None = None, device: torch.device | str = "cpu",
                      vocab: Vocabulary | None = None) -> TokenMasks:
    """Token masks for JSON valid under ``schema`` (spacing and order: :mod:`.json_schema`)."""
    return regex_constraint(schema_to_regex(schema), tokenizer, vocab_size, device, vocab)


@dataclass
class StepTimes:
    """Seconds spent per part of a constrained generation (device synchronized)."""

    tokens: int = 0  # tokens written, EOS included
    forwards: int = 0  # decode forwards (the prefill is apart)
    prefill_s: float = 0.0
    forward_s: float = 0.0
    mask_s: float = 0.0  # fetching the state's mask (building it on a first visit), masking
    advance_s: float = 0.0
    sample_s: float = 0.0

    @property
    def overhead_per_token_s(self) -> float:
        """What constraining adds per token: mask + advance."""
        return (self.mask_s + self.advance_s) / max(self.tokens, 1)

    @property
    def forward_per_token_s(self) -> float:
        return self.forward_s / max(self.forwards, 1)

    @property
    def overhead_ratio(self) -> float:
        """Constraint overhead per token / decode forward per token."""
        return self.overhead_per_token_s / max(self.forward_per_token_s, 1e-12)

    def summary(self) -> str:
        return (f"{self.tokens} tokens: mask+advance {self.overhead_per_token_s * 1e3:.3f} "
                f"ms/token vs forward {self.forward_per_token_s * 1e3:.3f} ms/token "
                f"({self.overhead_ratio:.1%})")


@dataclass
class ConstrainedOutput:
    tokens: list[int]  # EOS included when written
    text: str  # the tokens before EOS, decoded
    state: int  # the constraint's final state
    accepted: bool  # the text is a complete answer (True unless the constraint is broken)
    times: StepTimes = field(default_factory=StepTimes)


def constrained_generate(model: Transformer, tokenizer: Tokenizer, prompt_ids: list[int],
                         constraint: Constraint, max_new_tokens: int,
                         sampling: Sampling = GREEDY) -> ConstrainedOutput:
    """Up to ``max_new_tokens`` tokens after ``prompt_ids`` that ``constraint`` accepts.

    ValueError when no answer fits in ``max_new_tokens``; RuntimeError when a state allows
    no token though it does not accept (a constraint that breaks its own contract).
    """
    [prompt] = check_prompts(model, [prompt_ids], max_new_tokens)
    eos = constraint.eos_id
    check_decoding(model, sampling, eos)
    state = constraint.start
    _check_budget(constraint, state, max_new_tokens)
    dev, times, tokens = model.device, StepTimes(), []

    def now() -> float:
        synchronize(dev)  # queued GPU work is billed to the part that queued it
        return time.perf_counter()

    cache = KVCache.for_model(model, 1, len(prompt) + max_new_tokens)
    gen = make_generator(sampling, dev)
    t0 = now()
    logits = prefill(model, [prompt], cache)  # (1, V)
    times.prefill_s = now() - t0
    for i in range(max_new_tokens):
        t0 = now()
        # (V,); a no-op move when the constraint was built on the model's device.
        allowed = constraint.mask(state, max_new_tokens - i).to(logits.device)
        if allowed.shape[-1] != logits.shape[-1]:
            raise ValueError(f"the constraint's masks have {allowed.shape[-1]} entries, the "
                             f"model's logits {logits.shape[-1]}: build it with vocab_size="
                             f"{logits.shape[-1]}")
        n_allowed = int(allowed.sum())
        times.mask_s += now() - t0
        if n_allowed == 0:
            if constraint.is_accepting(state):  # complete, and no EOS token to say so
                break
            raise RuntimeError(f"no token is allowed in state {state}, which does not accept")
        if n_allowed == 1 and eos is not None and bool(allowed[eos]):
            tokens.append(eos)  # the answer is complete: no forward needed to say so
            break
        if i > 0:
            t0 = now()
            logits = decode_one_token(model, torch.tensor([tokens[-1]], device=dev), cache)
            times.forward_s += now() - t0
            times.forwards += 1
        t0 = now()
        masked = logits.masked_fill(~allowed, float("-inf"))  # (1, V)
        t1 = now()
        tok = int(sample(masked, sampling, gen)[0])
        t2 = now()
        times.mask_s += t1 - t0
        times.sample_s += t2 - t1
        tokens.append(tok)
        if tok == eos:
            break
        state = constraint.advance(state, tok)
        times.advance_s += now() - t2
    times.tokens = len(tokens)
    text = tokenizer.decode([t for t in tokens if t != eos])
    return ConstrainedOutput(tokens, text, state, constraint.is_accepting(state), times)


def _check_budget(constraint: Constraint, state: int, max_new_tokens: int) -> None:
    need = constraint.min_tokens(state)
    if need > max_new_tokens:
        raise ValueError("the constraint cannot be satisfied: "
                         + ("no sequence of this vocabulary's tokens spells an accepted text"
                            if need == float("inf") else
                            f"its shortest accepted text needs {int(need)} tokens, "
                            f"max_new_tokens={max_new_tokens}"))


class Cursor:
    """One request's place in a constraint: what the serving engine's model runner masks
    with and advances (:class:`infer_lab.serving.sequence.TokenConstraint`). The
    constraint itself (its cached masks) is shared by every request with the same schema.

    ValueError at once when no answer fits in ``max_tokens``.
    """

    def __init__(self, constraint: Constraint, max_tokens: int):
        _check_budget(constraint, constraint.start, max_tokens)
        self.constraint, self.state, self.done = constraint, constraint.start, False

    def allowed(self, remaining: int) -> torch.Tensor:
        return self.constraint.mask(self.state, remaining)  # (V,) bool

    def advance(self, token: int) -> None:
        if token == self.constraint.eos_id:
            self.done = True  # the answer is complete; the engine stops at EOS
            return
        self.state = self.constraint.advance(self.state, token)

    @property
    def accepted(self) -> bool:
        return self.constraint.is_accepting(self.state)


class SchemaCache:
    """Constraints by JSON schema for a server: the vocabulary is read once, each schema
    compiled once and its masks shared by every request that asks for it."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int | None = None,
                 max_schemas: int = 64):
        self.tokenizer, self.vocab_size, self.max_schemas = tokenizer, vocab_size, max_schemas
        self._vocab: Vocabulary | None = None
        self._compiled: dict[str, TokenMasks] = {}

    def cursor(self, schema: dict[str, Any], max_tokens: int) -> Cursor:
        """A request's cursor; ValueError for a schema we cannot compile or one whose
        shortest answer needs more than ``max_tokens`` tokens."""
        import json

        key = json.dumps(schema, sort_keys=True)
        masks = self._compiled.get(key)
        if masks is None:
            if self._vocab is None:
                self._vocab = Vocabulary.from_tokenizer(self.tokenizer, self.vocab_size)
            masks = schema_constraint(schema, self.tokenizer, vocab=self._vocab)
            if len(self._compiled) >= self.max_schemas:  # oldest out: a bounded memory
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = masks
        return Cursor(masks, max_tokens)


def check_draft(constraint: Constraint, state: int, tokens: Sequence[int],
                budget: int | None = None) -> int:
    """How many of the drafted ``tokens``, in order, the constraint allows from ``state``
    (within ``budget`` tokens, if given): speculative decoding keeps only those, and the
    target's own next token is then sampled under the mask of the state they reach."""
    accepted = 0
    for i, tok in enumerate(tokens):
        allowed = constraint.mask(state, None if budget is None else budget - i)  # (V,)
        if not 0 <= tok < allowed.shape[-1] or not bool(allowed[tok]):
            break
        accepted += 1
        if tok == constraint.eos_id:  # nothing after the end is part of the answer
            break
        state = constraint.advance(state, tok)
    return accepted
