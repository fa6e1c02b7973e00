"""The target's last hidden state ("features"), which learned drafts read.

Medusa's heads and EAGLE's draft layer predict from the vector the target's ``lm_head``
multiplies: the output of the final norm. A forward hook on ``model.norm`` records it,
so the model needs no second output and the drafts plug in from outside.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..model import Transformer


@contextlib.contextmanager
def capture_features(model: Transformer) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model`` appends its final-norm output
    (B, T, C) to the yielded list."""
    seen: list[torch.Tensor] = []
    handle = model.norm.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def features_and_logits(model: Transformer, idx: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, T, C), logits (B, T, V)) of one forward without a cache."""
    with capture_features(model) as seen:
        logits = model(idx)
    return seen[-1], logits


class FeatureBank:
    """The frozen target's features over a token stream, computed once and kept on disk.

    A draft for a large target (SmolLM2's forward is ~20x code-m's) would spend most of
    each training step re-running the target on the same text; the issue's budget allows
    computing the features once. The stream is cut into ``chunk``-token windows, each run
    alone (so its features see that window's context only, as a training window's would);
    ``tokens.npy`` (N, chunk) int32 and ``features.npy`` (N, chunk, C) fp16 are written
    to ``.partial`` files and renamed, so an interrupted build is redone, never half-read.
    Training windows are whole chunks, drawn by the run's checkpointed generator.
    """

    def __init__(self, tokens: np.ndarray, features: np.ndarray):
        self.tokens, self.features = tokens, features  # (N, T), (N, T, C)

    @classmethod
    def build(cls, target: Transformer, ids: np.ndarray, folder: Path, chunk: int,
              max_tokens: int, batch: int = 4, progress: bool = True) -> FeatureBank:
        """Load the bank in ``folder``, or compute it over the first ``max_tokens``."""
        from tqdm.auto import tqdm

        from ..zoo.loop import atomic_save

        t_path, f_path = folder / "tokens.npy", folder / "features.npy"
        n = min(max_tokens, len(ids)) // chunk
        if n < 1:
            raise ValueError(f"a feature bank needs at least one window of {chunk} tokens; "
                             f"the stream has {len(ids)}")
        if t_path.exists() and f_path.exists():
            bank = cls(np.load(t_path), np.load(f_path, mmap_mode="r"))
            if bank.tokens.shape == (n, chunk) and bank.features.shape[2] == \
                    target.config.d_model:
                return bank
        folder.mkdir(parents=True, exist_ok=True)
        tokens = ids[: n * chunk].astype(np.int32).reshape(n, chunk)
        part = folder / "features.npy.partial.npy"
        feats = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16,
                                          shape=(n, chunk, target.config.d_model))
        with torch.no_grad(), capture_features(target) as seen:
            for i in tqdm(range(0, n, batch), desc="target features", disable=not progress):
                target(torch.from_numpy(tokens[i:i + batch].astype(np.int64)))  # (b, T, V)
                feats[i:i + batch] = seen.pop().half().numpy()
        feats.flush()
        del feats
        os.replace(part, f_path)
        atomic_save(lambda p: np.save(p, tokens), t_path, suffix=".npy")
        return cls(tokens, np.load(f_path, mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.tokens)

    def windows(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks ``idx``: tokens (B, T) int64 and features (B, T, C) float32."""
        x = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return x, torch.from_numpy(np.asarray(self.features[idx], dtype=np.float32))

    def batches(self, batch_size: int):
        """``gen -> (tokens, features)``: ``batch_size`` random chunks, for ``train_loop``."""
        def draw(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return self.windows(torch.randint(len(self), (batch_size,), generator=gen).tolist())
        return draw


class DraftVocab:
    """A mixin for drafts that keep a draft vocabulary with their weights (the buffer
    ``vocab``, saved and loaded with them); call ``self.set_vocab(None)`` in ``__init__``."""

    def set_vocab(self, ids: torch.Tensor | None) -> None:
        """Keep ``ids`` (e.g. :func:`~.eagle.frequent_tokens`); None: the full vocabulary."""
        vocab = None if ids is None else torch.as_tensor(ids, dtype=torch.int32)
        if "vocab" in self._buffers:
            self.vocab = vocab
        else:
            self.register_buffer("vocab", vocab)


class DraftHead:
    """The target's ``lm_head`` over a draft vocabulary: the rows of the most frequent
    tokens only (FR-Spec, Zhao et al. 2025; EAGLE-3's reduced draft vocabulary). With
    SmolLM2's 49k-token head, reading the whole head per draft step costs more than the
    draft itself; the target still verifies over the full vocabulary, so outputs are
    unchanged. ``vocab`` None (or the whole vocabulary): the full head."""

    def __init__(self, target: Transformer, vocab: torch.Tensor | None = None):
        self.size = target.config.vocab_size
        self.vocab = None if vocab is None or len(vocab) >= self.size else \
            vocab.to(device=target.device, dtype=torch.long)  # (Vd,)
        w = target.lm_head.weight  # (V, C)
        self.weight = w if self.vocab is None else w[self.vocab].contiguous()  # (Vd, C)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.weight.T  # (..., C) -> (..., Vd)

    def token_ids(self, idx: list[int]) -> list[int]:
        """Rows of :meth:`logits` -> token ids."""
        return idx if self.vocab is None else self.vocab[idx].tolist()

    def full(self, q: torch.Tensor | None) -> torch.Tensor | None:
        """A distribution over the draft vocabulary (Vd,) -> over the full one (V,)."""
        if q is None or self.vocab is None:
            return q
        return torch.zeros(self.size, dtype=q.dtype, device=q.device).index_copy_(
            0, self.vocab, q)  # (V,)
