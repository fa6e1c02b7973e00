"""Drafts: who proposes the k tokens the target verifies.

Every draft implements :class:`Drafter`. ``propose`` returns q = None for a
deterministic proposal (q is one-hot: prompt lookup), so the acceptance rule needs no
probabilities from it; ``models`` names the draft models a target must be checked
against (same vocabulary, same device), so the decode loop asks instead of probing.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..generate import GREEDY, Sampling, sample_with_probs
from ..kv_cache import KVCache
from ..model import Transformer


class Drafter(Protocol):
    """What :func:`~infer_lab.speculative.decode.speculative_decode` needs from a draft."""

    def start(self, prompt: list[int], max_len: int, gen: torch.Generator | None) -> None:
        """A new request: the prompt, the longest it can grow, the random stream."""
        ...

    def propose(self, k: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to k tokens, and their draft probabilities (k, V) or None (one-hot)."""
        ...

    def commit(self, accepted: list[int], next_token: int) -> None:
        """What the target kept of the proposal, and the token it chose after it."""
        ...

    def models(self) -> list[Transformer]:
        """The draft models behind this draft (none for prompt lookup)."""
        ...


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

    def models(self) -> list[Transformer]:
        return [self.model]

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

    def models(self) -> list[Transformer]:
        return []


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

    def models(self) -> list[Transformer]:
        return self.model.models() + self.lookup.models()


def quantized_draft(target: Transformer, method: str = "int8") -> Transformer:
    """Self-speculation: a quantized copy of the target drafts for the target itself.

    Any scheme of :mod:`infer_lab.quant.catalog` by name ("int8", "int4-g64",
    "int8 dynamic (fbgemm)", "q4_k", ...). The copy agrees with the target far more often
    than a smaller model does (high alpha), but it only pays off when it is also much
    cheaper per token (low c): on a GPU, where decoding is memory-bound and 4-bit weights
    are read 4x faster; not for a tiny model on a CPU, where per-layer overhead dominates.
    """
    from ..quant.catalog import build

    return build(target, method)
