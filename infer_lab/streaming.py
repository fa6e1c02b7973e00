"""Text in, text out: stream tokens as text, with stop strings, from a text prompt.

    stream(model, tok, prompt)     yields a TokenEvent per token: id, text, seconds
    complete(model, tok, prompt)   the continuation as one string
    TextStream                     token ids -> text deltas, the one stop-string rule

The token loop is :func:`infer_lab.generate.decode_steps`; this module only turns its
tokens into text. Decoding is incremental (:class:`~infer_lab.tokenizer.StreamDecoder`:
whole UTF-8 characters only), and a tail of the text that could still grow into a stop
string is held back until the next token says whether it did. The HTTP server streams
through the same :class:`TextStream`, so both cut at the same place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import observe
from .generate import decode_steps
from .sampling import GREEDY, Sampling

if TYPE_CHECKING:
    from .model import Transformer

__all__ = ["TextStream", "TokenEvent", "complete", "stream"]


@dataclass
class TokenEvent:
    """One streamed token: its id, the text it completes, and seconds since the call."""

    index: int
    token: int
    text: str
    t: float


def stream(model: Transformer, tokenizer, prompt: str, max_new_tokens: int = 64,
           sampling: Sampling = GREEDY, stop: list[str] | None = None,
           stop_at_eos: bool = True,
           observers: Sequence[observe.Observer] | None = None) -> Iterator[TokenEvent]:
    """Generate from a text prompt, yielding each token as soon as it exists.

    Stops at EOS, after ``max_new_tokens``, or when the text so far contains a stop
    string (the stop string itself is not yielded). The first event's ``t`` is the time
    to first token (TTFT); gaps between later events are the time per output token.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}; for token "
                         "ids use generate(model, [ids], n)")
    if not prompt:
        raise ValueError("empty prompt: give at least one character")
    ids = tokenizer.encode(prompt)
    eos = tokenizer.eos_id if stop_at_eos else None
    text, t0 = TextStream(tokenizer, stop or []), time.perf_counter()
    steps = decode_steps(model, [ids], max_new_tokens, sampling, eos, observers=observers)
    for i, tok in enumerate(steps):
        t = int(tok[0])
        if eos is not None and t == eos:
            return
        delta, hit = text.push(t, last=i == max_new_tokens - 1)
        yield TokenEvent(i, t, delta, time.perf_counter() - t0)
        if hit:
            return


class TextStream:
    """Token ids -> text deltas: whole UTF-8 characters, stop strings cut and held back.

    The one stop-string rule, for :func:`stream` and the HTTP server: the text up to the
    first stop string is sent, never the stop string itself; a tail that could still grow
    into one waits until the next token says whether it did (or until nothing follows).
    """

    def __init__(self, tokenizer, stop: list[str]):
        from .tokenizer import StreamDecoder

        self.dec, self.stop = StreamDecoder(tokenizer), stop
        self.text, self.sent = "", 0

    def push(self, token: int, last: bool) -> tuple[str, bool]:
        """(new text safe to send, stop string reached)."""
        self.text += self.dec.push(token)
        hit = min((self.text.find(s) for s in self.stop if s in self.text), default=-1)
        # A tail that may still grow into a stop string waits, unless nothing follows.
        end = hit if hit >= 0 else len(self.text) - (0 if last else self._partial_stop())
        delta, self.sent = self.text[self.sent:end], max(self.sent, end)
        return delta, hit >= 0

    def flush(self) -> str:
        """Text held back for a stop string that never came (the request ended)."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta

    def _partial_stop(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        return max((n for s in self.stop for n in range(1, len(s))
                    if self.text.endswith(s[:n])), default=0)


def complete(model: Transformer, tokenizer, prompt: str, max_new_tokens: int = 64,
             sampling: Sampling = GREEDY, stop: list[str] | None = None,
             observers: Sequence[observe.Observer] | None = None) -> str:
    """The generated continuation of ``prompt`` as text."""
    return "".join(e.text for e in stream(model, tokenizer, prompt, max_new_tokens,
                                          sampling, stop, observers=observers))
