"""Lab 00's technique exercise: the autoregressive greedy decode loop, through a KV cache.

Generation is one loop (gpt-fast's ``generate``, :func:`infer_lab.generate.decode_steps`):

    logits = model(prompt, cache)          # prefill: every prompt token in ONE forward
    token  = argmax(logits[last position])
    repeat:  logits = model(token, cache)  # decode: one token per forward, the cache
             token  = argmax(logits)       # holds the keys and values of all the others

The learner writes ``greedy_decode(model, cache, prompt, max_new_tokens) -> list[int]``.
The checker hands it a zoo model (code-s or code-m) and an empty cache that records each
forward it serves (:class:`MeteredCache`), so an answer is graded on two things: the
tokens (those of the package's own greedy generation) and the forwards (the prompt once,
then one token per step). Recomputing the whole sequence each step gives the right tokens
from an empty cache, and is caught as such.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache as memoize

import torch

from ..kv_cache import KVCache, KVStep
from .checker import Case, Exercise, Mistake


# -- the reference ------------------------------------------------------------------------
def greedy_decode(model, cache, prompt: list[int], max_new_tokens: int) -> list[int]:
    """``max_new_tokens`` greedy tokens after ``prompt``: prefill once, then one token per
    forward through ``cache`` (the model's cache contract: ``model(tokens, cache)``)."""
    if max_new_tokens == 0:
        return []
    idx = torch.tensor([prompt], device=model.device)  # (1, P): a batch of one
    logits = model(idx, cache)  # (1, P, V); the cache now holds the prompt's K and V
    tok = logits[:, -1].argmax(-1)  # (1,): the next token comes from the last position
    out = [int(tok)]
    for _ in range(max_new_tokens - 1):
        logits = model(tok[:, None], cache)  # (1, 1, V): one new token, the rest cached
        tok = logits[:, -1].argmax(-1)  # (1,)
        out.append(int(tok))
    return out


# -- what a call produced -------------------------------------------------------------------
class MeteredCache(KVCache):
    """A KV cache that records how many tokens each forward through it brought (``calls``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def begin(self, T: int, pos: torch.Tensor | None) -> KVStep:
        self.calls.append(T)
        return super().begin(T, pos)


@dataclass(frozen=True)
class Decoded:
    """What a decode loop did: the tokens it returned, the tokens of each cached forward."""

    tokens: object  # list[int] when the answer has the right form
    forwards: tuple[int, ...]


@memoize
def zoo_model(name: str):
    """A zoo model on the CPU, loaded once per process (the checker's cases reuse it)."""
    from ..zoo import load_zoo

    return load_zoo(name, "cpu")


def _as_tokens(got):
    """The learner's tokens as a list of ints when they are ints in any usual container."""
    if isinstance(got, torch.Tensor) and got.dim() == 1 and not torch.is_floating_point(got):
        return got.tolist()
    if isinstance(got, (list, tuple)) and all(
            isinstance(t, int) or (isinstance(t, torch.Tensor) and t.numel() == 1
                                   and not torch.is_floating_point(t)) for t in got):
        return [int(t) for t in got]
    return got


# -- wrong loops a learner might write -------------------------------------------------------
def _no_cache(model, cache, prompt, max_new_tokens):
    seq = list(prompt)
    for _ in range(max_new_tokens):  # the whole sequence every step; the cache stays empty
        logits = model(torch.tensor([seq], device=model.device))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def _token_by_token_prefill(model, cache, prompt, max_new_tokens):
    for t in prompt:  # P forwards of one token: right answer, P times the weight reads
        logits = model(torch.tensor([[t]], device=model.device), cache)
    tok = logits[:, -1].argmax(-1)
    out = [int(tok)]
    for _ in range(max_new_tokens - 1):
        tok = model(tok[:, None], cache)[:, -1].argmax(-1)
        out.append(int(tok))
    return out


def _first_position(model, cache, prompt, max_new_tokens):
    logits = model(torch.tensor([prompt], device=model.device), cache)
    tok = logits[:, 0].argmax(-1)  # the prediction after the prompt's FIRST token
    out = [int(tok)]
    for _ in range(max_new_tokens - 1):
        tok = model(tok[:, None], cache)[:, -1].argmax(-1)
        out.append(int(tok))
    return out


def _one_too_many(model, cache, prompt, max_new_tokens):
    tok = model(torch.tensor([prompt], device=model.device), cache)[:, -1].argmax(-1)
    out = [int(tok)]
    for _ in range(max_new_tokens):  # the prefill's token plus max_new_tokens more
        tok = model(tok[:, None], cache)[:, -1].argmax(-1)
        out.append(int(tok))
    return out


def _with_prompt(model, cache, prompt, max_new_tokens):
    return list(prompt) + greedy_decode(model, cache, prompt, max_new_tokens)


def _feeds_first_token(model, cache, prompt, max_new_tokens):
    first = model(torch.tensor([prompt], device=model.device), cache)[:, -1].argmax(-1)
    out = [int(first)]
    for _ in range(max_new_tokens - 1):  # never moves on from the prefill's token
        out.append(int(model(first[:, None], cache)[:, -1].argmax(-1)))
    return out


# -- the exercise --------------------------------------------------------------------------
SNIPPETS = ("def read_config(path):", "import os\n\n\ndef main(", "class Stack:\n    def push(self,",
            "for i in range(", "    return", "x")


class DecodeExercise(Exercise):
    """greedy_decode: the cases name a zoo model and a prompt; each call gets a fresh
    :class:`MeteredCache`, and the answer is graded on its tokens and its forwards."""

    def _call(self, fn, case: Case) -> Decoded:
        name, text, n = case.args
        model, tok = zoo_model(name)
        prompt = tok.encode(text)
        cache = MeteredCache.for_model(model, 1, len(prompt) + n)
        with torch.inference_mode():  # no autograd graph: the learner needs no decorator
            got = fn(model, cache, prompt, n)
        return Decoded(_as_tokens(got), tuple(cache.calls))

    def describe(self, case: Case) -> str:
        name, text, n = case.args
        return (f"greedy_decode(model=<{name}>, cache=<empty KVCache>, prompt=tok.encode("
                f"{text!r}), max_new_tokens={n})")

    def mismatch(self, case: Case, got: Decoded) -> str | None:
        want = self._call(self.reference, case)
        return decode_mismatch(got, want)


def decode_mismatch(got: Decoded, want: Decoded) -> str | None:
    """None when ``got`` has the reference's tokens and fed the cache as a decode loop
    does: the prompt in one forward, then one token per forward."""
    tokens, n = got.tokens, len(want.tokens)
    if not isinstance(tokens, list):
        return f"expected a list of {n} token ids (ints), got {type(tokens).__name__}"
    if len(tokens) != n:
        return f"expected {n} new tokens, got {len(tokens)}"
    bad = next((i for i, (a, b) in enumerate(zip(tokens, want.tokens)) if a != b), None)
    if bad is not None:
        return (f"{sum(a != b for a, b in zip(tokens, want.tokens))} of {n} tokens differ; "
                f"first at new token {bad}: expected {want.tokens[bad]}, got {tokens[bad]}")
    if n == 0:
        return None
    prompt_len, f = want.forwards[0], list(got.forwards)
    if not f:
        return ("right tokens, but the cache you were given was never used: each step "
                "recomputed the whole sequence")
    if f[0] != prompt_len:
        return (f"right tokens, but the first forward through the cache fed {f[0]} "
                f"token(s); the prefill feeds the whole prompt ({prompt_len} tokens) at once")
    rest = f[1:]
    if len(rest) not in (n - 1, n) or any(t != 1 for t in rest):
        return (f"right tokens, but after the prefill the cache saw forwards of {rest} "
                f"tokens; a decode step feeds one token ({n - 1} steps for {n} tokens)")
    return None


def _random_case(rng: random.Random) -> Case:
    text = rng.choice(SNIPPETS)
    return Case((rng.choice(["code-s", "code-s", "code-m"]), text, rng.randint(1, 8)))


CONCEPT = ("Generation is a loop around the model. The prompt goes through the model once, "
           "as one batch of tokens, which fills the cache with its keys and values; the next "
           "token is the most likely one at the LAST position. After that, each step feeds "
           "only the newest token: the cache supplies everything earlier. Stop after "
           "max_new_tokens tokens and hand back only the new ones.")
CODE_HINT = ("logits = model(torch.tensor([prompt], device=model.device), cache)  # (1, P, V); "
             "tok = logits[:, -1].argmax(-1)  # (1,); out = [int(tok)]; then "
             "max_new_tokens - 1 times: logits = model(tok[:, None], cache); "
             "tok = logits[:, -1].argmax(-1); out.append(int(tok)). Return out.")


def make_exercise(lab: str) -> DecodeExercise:
    return DecodeExercise(
        "greedy_decode", lab, greedy_decode,
        fixed_cases=[Case(("code-s", "def read_config(path):", 1)),  # prefill only
                     Case(("code-s", "def read_config(path):", 6)),
                     Case(("code-s", "x", 5)),  # a one-token prompt
                     Case(("code-m", "class Stack:\n    def push(self,", 5))],
        random_case=_random_case, n_random=3, kind="technique",
        hint=CONCEPT, code_hint=CODE_HINT,
        mistakes=[
            Mistake("no cache", _no_cache,
                    "Your tokens are right, but you recomputed the whole sequence at every "
                    "step and the cache stayed empty: that is the O(n^2) loop lab 01 times. "
                    "Pass the cache to the model and, after the prompt, feed only the newest "
                    "token."),
            Mistake("prefill token by token", _token_by_token_prefill,
                    "Your tokens are right, but you fed the prompt one token per forward: "
                    "prefill it in ONE forward, so each weight read serves every prompt "
                    "token (that is why time to first token is short)."),
            Mistake("first position", _first_position,
                    "The prefill's logits have one row per prompt position: the next token "
                    "is predicted at the last position, not the first."),
            Mistake("one too many", _one_too_many,
                    "Off by one: the prefill already yields the first new token, so the "
                    "loop runs max_new_tokens - 1 more steps."),
            Mistake("returns the prompt", _with_prompt,
                    "Return only the new tokens, not the prompt followed by them."),
            Mistake("stuck on the first token", _feeds_first_token,
                    "Each step must feed the token the previous step produced; yours keeps "
                    "feeding the prefill's token."),
        ],
    )
