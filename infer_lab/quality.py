"""Did an optimization hurt the model? Three quality measures on held-out code.

* Perplexity PPL = exp(mean NLL) over the tokens of a text, and bits per byte
  BPB = total NLL (nats) / (UTF-8 bytes x ln 2). BPB does not depend on the
  tokenizer, so models with different vocabularies compare fairly.
* Next-line exact match: given a file up to the end of a line, does greedy decoding
  write the next non-blank line exactly (whitespace-stripped)? A task metric: it moves
  when small logit changes flip an argmax, which perplexity averages away.
* Parse rate: the share of sampled completions that are valid Python (``ast``), the
  lab's stand-in for "formatting stability" under aggressive compression.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .generate import GREEDY, Sampling, decode_steps
from .tokenizer import StreamDecoder


# -- perplexity and bits per byte ----------------------------------------------------------
@dataclass(frozen=True)
class Perplexity:
    loss: float  # mean NLL per predicted token, nats
    ppl: float
    bits_per_byte: float | None  # None when the byte count is unknown
    n_tokens: int
    n_bytes: int | None


LOGITS_BUDGET = 64 * 2**20  # bytes of fp32 logits per perplexity batch


@torch.inference_mode()
def token_nll(model, ids: Sequence[int], seq_len: int = 256, batch_size: int = 8,
              progress: bool = True) -> tuple[float, int]:
    """Sum of -log p(ids[i] | ids[:i]) over i >= 1, and how many terms that is.

    The stream is cut into windows of seq_len + 1 tokens that overlap by one, so every
    token after the first is predicted exactly once, with the context since its
    window began (at most seq_len tokens).
    """
    from tqdm.auto import tqdm

    seq_len = min(seq_len, model.config.max_seq_len)
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    n = len(ids_t)
    starts = range(0, n - 1, seq_len)
    full = [s for s in starts if s + seq_len + 1 <= n]
    tail = [s for s in starts if s + seq_len + 1 > n]  # the shorter last window, if any
    # A batch's logits are b x seq_len x vocab floats: cap them at LOGITS_BUDGET bytes, so
    # that a 49k-token vocabulary (SmolLM2: 50 MB per 256-token window) scores one window
    # at a time instead of holding 400 MB of logits (and as much again in log-softmax).
    vocab = model.config.vocab_size
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (4 * seq_len * vocab)))
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in tail]
    total, count = 0.0, 0
    for group in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 4):
        win = torch.stack([ids_t[s:s + seq_len + 1] for s in group]).to(model.device)
        logits = model(win[:, :-1])  # (b, T, V)
        nll = F.cross_entropy(logits.float().flatten(0, 1), win[:, 1:].flatten(),
                              reduction="sum")
        total += float(nll)
        count += win[:, 1:].numel()
    return total, count


def perplexity(model, tokenizer_or_ids, text: str | None = None, seq_len: int = 256,
               max_tokens: int | None = None, batch_size: int = 8,
               progress: bool = True) -> Perplexity:
    """Perplexity and bits per byte of ``text`` (or of a list of token ids).

    With a tokenizer, the text is encoded after an EOS token (the separator the zoo was
    trained with), so every token of the text is predicted and BPB counts all of its
    bytes. ``max_tokens`` cuts the text to its first tokens (and BPB to their bytes).
    With token ids, the first id is context only; pass the ``text`` they encode to get
    BPB (only when nothing is cut by ``max_tokens``).
    """
    if isinstance(tokenizer_or_ids, (list, tuple, torch.Tensor)):
        ids = [int(t) for t in tokenizer_or_ids]
        cut = max_tokens is not None and len(ids) > max_tokens + 1
        ids = ids[:max_tokens + 1] if cut else ids
        n_bytes = len(text.encode()) if text is not None and not cut else None
    else:
        tok = tokenizer_or_ids
        if text is None:
            raise ValueError("give the text to score")
        ids = tok.encode(text)
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[:max_tokens]
            text = tok.decode(ids)
        n_bytes = len(text.encode())
        if tok.eos_id is not None:
            ids = [tok.eos_id, *ids]
    if len(ids) < 2:
        raise ValueError("need at least two tokens to measure perplexity")
    nats, n = token_nll(model, ids, seq_len, batch_size, progress)
    loss = nats / n
    bpb = nats / (n_bytes * math.log(2)) if n_bytes else None
    return Perplexity(loss=loss, ppl=math.exp(loss), bits_per_byte=bpb, n_tokens=n,
                      n_bytes=n_bytes)


def heldout_ids(tok, n_tokens: int) -> list[int]:
    """EOS then the first ``n_tokens`` tokens of the held-out code (never trained on): the
    ids the labs and ``python -m infer_lab.bench quant|compress`` score perplexity on."""
    from .zoo.data import held_out_text

    # 12 characters a token: more text than n_tokens tokens need, encoded once
    ids = tok.encode(held_out_text(max_chars=12 * n_tokens))[:n_tokens]
    return ([tok.eos_id] if tok.eos_id is not None else []) + ids


# -- next-line exact match -------------------------------------------------------------
@dataclass(frozen=True)
class NextLineSample:
    prefix: str  # the file up to the end of the line before the target (no newline)
    target: str  # the next non-blank line, stripped


def _is_trivial(line: str, min_chars: int) -> bool:
    s = line.strip()
    return len(s) < min_chars or s.startswith("#") or s in ('"""', "'''")


def next_line_samples(files_or_text: str | Iterable, n_samples: int, seed: int = 0,
                      min_chars: int = 8, context_chars: int = 2000) -> list[NextLineSample]:
    """Deterministically pick ``n_samples`` non-trivial lines and their prefixes.

    A line is non-trivial when it has at least ``min_chars`` characters once stripped and
    is not a comment or a bare docstring quote. Each prefix keeps the last
    ``context_chars`` characters before the line and ends *before* the newline: the
    tokenizer then sees the same token boundaries as in training (byte-level BPE
    merges a newline with the indentation after it).
    """
    texts = [files_or_text] if isinstance(files_or_text, str) else \
        [getattr(f, "text", f) for f in files_or_text]
    candidates = []  # (text index, offset where the target line starts)
    for ti, text in enumerate(texts):
        offset, seen_code = 0, False
        for line in text.splitlines(keepends=True):
            if seen_code and not _is_trivial(line, min_chars):
                candidates.append((ti, offset))
            seen_code = seen_code or bool(line.strip())
            offset += len(line)
    if not candidates:
        raise ValueError("no non-trivial lines with code before them in the text")
    picks = random.Random(seed).sample(candidates, min(n_samples, len(candidates)))
    out = []
    for ti, off in sorted(picks):
        text = texts[ti]
        prefix = text[:off].rstrip()  # up to the end of the last non-blank line
        line = text[off:].split("\n", 1)[0]
        out.append(NextLineSample(prefix[-context_chars:], line.strip()))
    return out


def greedy_next_lines(model, tokenizer, prefixes: Sequence[str], max_line_tokens: int = 48,
                      context_tokens: int = 384, batch_size: int = 16,
                      progress: bool = True) -> list[str]:
    """Greedily continue each prefix until it has written one whole non-blank line.

    Returns that line, stripped (or whatever was written, if ``max_line_tokens`` ran out).
    """
    from tqdm.auto import tqdm

    context_tokens = min(context_tokens, model.config.max_seq_len - max_line_tokens)
    out: list[str] = []
    groups = [prefixes[i:i + batch_size] for i in range(0, len(prefixes), batch_size)]
    for group in tqdm(groups, desc="next line", disable=not progress or len(groups) < 2):
        prompts = [tokenizer.encode(p)[-context_tokens:] or [tokenizer.eos_id or 0]
                   for p in group]
        max_new = min(max_line_tokens,
                      model.config.max_seq_len - max(len(p) for p in prompts))
        decoders = [StreamDecoder(tokenizer) for _ in group]
        texts = [""] * len(group)
        for tok in decode_steps(model, prompts, max_new, GREEDY):
            for i, t in enumerate(tok.tolist()):
                if not _line_done(texts[i]):
                    texts[i] += decoders[i].push(t)
            if all(_line_done(t) for t in texts):
                break
        out.extend(t.lstrip().split("\n", 1)[0].strip() for t in texts)
    return out


def _line_done(text: str) -> bool:
    """True once the text holds a non-blank line followed by a newline."""
    return "\n" in text.lstrip()


@dataclass(frozen=True)
class ExactMatch:
    score: float  # share of samples whose predicted line equals the target
    n: int
    samples: list[NextLineSample] = field(repr=False)
    predictions: list[str] = field(repr=False)


def next_line_exact_match(model, tokenizer, files_or_text: str | Iterable,
                          n_samples: int = 100, seed: int = 0, max_line_tokens: int = 48,
                          context_chars: int = 2000, batch_size: int = 16,
                          progress: bool = True) -> ExactMatch:
    """Share of held-out lines that greedy decoding reproduces exactly (stripped)."""
    samples = next_line_samples(files_or_text, n_samples, seed, context_chars=context_chars)
    preds = greedy_next_lines(model, tokenizer, [s.prefix for s in samples],
                              max_line_tokens, batch_size=batch_size, progress=progress)
    hits = sum(p == s.target for p, s in zip(preds, samples))
    return ExactMatch(hits / len(samples), len(samples), samples, preds)


# -- does it parse? ---------------------------------------------------------------------
def parses_as_python(code: str) -> bool:
    """Whether ``code`` is valid Python, forgiving where a sampled completion was cut.

    The rule: (1) drop the text after the last newline (an unfinished last line says
    where we stopped, not what the model knows); (2) parse with ``ast``; (3) if that
    fails and the last non-blank line opens a block (ends with ':'), add an indented
    ``pass`` and parse again. Anything else that is unfinished, such as an open
    bracket or docstring at the cut, counts as a failure.
    """
    kept = code[: code.rfind("\n") + 1] if "\n" in code else code  # one line: keep it
    if _parses(kept):
        return True
    lines = [ln for ln in kept.splitlines() if ln.strip()]
    if lines and lines[-1].rstrip().endswith(":"):
        indent = len(lines[-1]) - len(lines[-1].lstrip())
        return _parses(kept.rstrip("\n") + "\n" + " " * (indent + 4) + "pass\n")
    return False


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source with null bytes
        return False
    return True


def parse_rate(items: Iterable[str | tuple[str, str]]) -> float:
    """Share of items that parse: code strings, or (prompt, completion) pairs joined."""
    flags = [parses_as_python(x if isinstance(x, str) else x[0] + x[1]) for x in items]
    if not flags:
        raise ValueError("parse_rate of nothing")
    return sum(flags) / len(flags)


def python_prompts(files_or_text: str | Iterable, n: int, seed: int = 0,
                   max_chars: int = 2000) -> list[str]:
    """Prompts for :func:`sampled_parse_rate`: a file up to a top-level def/class header.

    Each prompt is valid Python up to its cut (so a failure to parse is the model's),
    ends right after the header's ':' (no newline, for the tokenizer's sake, as in
    :func:`next_line_samples`), and is at most ``max_chars`` long. Picked with ``seed``.
    """
    texts = [files_or_text] if isinstance(files_or_text, str) else \
        [getattr(f, "text", f) for f in files_or_text]
    candidates = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            body_line = node.body[0].lineno - 1  # 0-based line of the first body statement
            if body_line <= node.lineno - 1:  # one-liner such as `def f(): pass`
                continue
            prompt = "".join(lines[:body_line]).rstrip()
            if prompt.endswith(":") and len(prompt) <= max_chars:
                candidates.append(prompt)
    if not candidates:
        raise ValueError(f"no top-level def/class header within the first {max_chars} "
                         "characters of any file")
    return random.Random(seed).sample(candidates, min(n, len(candidates)))


@dataclass(frozen=True)
class ParseRate:
    rate: float
    completions: list[str] = field(repr=False)


def sampled_parse_rate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 96,
                       sampling: Sampling = Sampling(temperature=0.8, top_p=0.95, seed=0),
                       batch_size: int = 8, progress: bool = True) -> ParseRate:
    """Sample a completion per prompt and report the share where prompt + completion parse.

    EOS ends a completion early (then it is judged as written). A seed in ``sampling``
    makes the completions repeatable.
    """
    from tqdm.auto import tqdm

    from .generate import generate

    completions, to_parse = [], []
    groups = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    for group in tqdm(groups, desc="sampling", disable=not progress or len(groups) < 2):
        ids = [tokenizer.encode(p) for p in group]
        rows = generate(model, ids, max_new_tokens, sampling, eos_id=tokenizer.eos_id)
        for prompt, row in zip(group, rows):
            ended = tokenizer.eos_id is not None and bool(row) and row[-1] == tokenizer.eos_id
            text = tokenizer.decode(row[:-1] if ended else row)
            completions.append(text)
            # A completion ended by EOS is finished: its last line is whole.
            to_parse.append(prompt + text + ("\n" if ended else ""))
    return ParseRate(parse_rate(to_parse), completions)
