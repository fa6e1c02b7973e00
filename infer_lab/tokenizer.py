"""A thin wrapper over Hugging Face ``tokenizers`` (byte-level BPE, Sennrich et al. 2016).

The zoo ships a ``tokenizer.json``; real checkpoints bring their own. Both look the same
to the rest of the package: ``encode``, ``decode``, ``eos_id``, ``vocab_size``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

EOS = "<|endoftext|>"


class Tokenizer:
    """Text <-> token ids."""

    def __init__(self, tok: _HFTokenizer, eos_token: str | None = EOS,
                 chat_template: str | None = None):
        self._tok = tok
        self.eos_token = eos_token
        self.eos_id = tok.token_to_id(eos_token) if eos_token else None
        # A jinja2 template that renders a conversation into the prompt an instruct model
        # was trained on (infer_lab.chat); None for a plain completion model (the zoo's).
        self.chat_template = chat_template

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = EOS) -> "Tokenizer":
        return cls(_HFTokenizer.from_file(str(path)), eos_token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))


class StreamDecoder:
    """Turns tokens into text one at a time.

    Byte-level BPE can split one UTF-8 character over several tokens, so decoding each
    token alone would print replacement characters; we hold text back until it is whole.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            return ""
        new = text[self.emitted:]
        self.emitted = len(text)
        return new
