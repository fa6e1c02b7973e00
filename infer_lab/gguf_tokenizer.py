"""A GGUF file's tokenizer, rebuilt from its metadata with ``tokenizers``.

GGUF keeps a byte-level BPE tokenizer (GPT-2's scheme; Sennrich et al. 2016 for BPE) as
plain lists: ``tokenizer.ggml.tokens`` (id -> token string, in the byte-to-unicode
alphabet where a space is "Ġ"), ``tokenizer.ggml.merges`` ("a b" pairs in merge order),
``tokenizer.ggml.token_type`` (3 = control tokens such as ``<|im_start|>``), the BOS/EOS
ids, and ``tokenizer.ggml.pre``: the name of the pre-tokenizer, the regex that splits
text into words before BPE runs inside each. That name maps to a pipeline here:

    smollm   digits one by one, then GPT-2's byte-level split (SmolLM, SmolLM2)
    gpt2     GPT-2's byte-level split

Control tokens are added as special tokens, so ``<|im_end|>`` in a chat prompt is one id.
"""

from __future__ import annotations

from typing import Any

from .tokenizer import Tokenizer

CONTROL = 3  # llama.cpp's token type for control tokens
PRE_TOKENIZERS = ("smollm", "gpt2")


def _pre_tokenizer(name: str) -> Any:
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if name == "gpt2":
        return byte_level
    raise ValueError(f"GGUF pre-tokenizer {name!r} is not supported; supported: "
                     f"{', '.join(PRE_TOKENIZERS)}")


def tokenizer_from_metadata(meta: dict[str, Any]) -> Tokenizer:
    """Our :class:`~infer_lab.tokenizer.Tokenizer` from a GGUF file's metadata."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    kind = meta.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in meta:
        raise ValueError("the GGUF file has no tokenizer in its metadata "
                         "(tokenizer.ggml.model / tokenizer.ggml.tokens)")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; supported: gpt2 "
                         "(byte-level BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                                 fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt2"))
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return Tokenizer(tok, eos_token=tokens[eos] if eos is not None else None,
                     chat_template=meta.get("tokenizer.chat_template"))
