"""Autoregressive generation as small composable functions (after gpt-fast).

    prefill(model, prompts, cache)        -> logits of each prompt's last token
    decode_one_token(model, tokens, cache) -> logits of the next token
    sample(logits, sampling, generator)   -> next tokens (the one sampling path)
    decode_steps(...)                      prefill, then one token per step, observed
    generate(...)                          the tokens of each prompt until a stop condition
    generate(..., use_cache=False)         the O(n^2) baseline: a full forward per token

Text in and out (stream, complete, stop strings) is :mod:`infer_lab.streaming`.

Sampling: greedy (temperature 0), temperature scaling p ~ softmax(z / T), top-k, and
nucleus / top-p sampling (Holtzman et al. 2020: keep the smallest set of tokens whose
probability mass reaches p).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from . import observe
from .kv_cache import KVCache
from .model import Transformer
from .sampling import GREEDY, MIN_TEMPERATURE, Sampling
from .validate import integer, prompt_batch

__all__ = ["GREEDY", "MIN_TEMPERATURE", "Sampling", "check_decoding", "check_logits",
           "check_prompts", "collect", "decode_one_token", "decode_steps",
           "decode_steps_no_cache", "draw", "generate", "logits_to_probs", "make_generator",
           "prefill", "sample", "sample_with_probs"]


def logits_to_probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Next-token distribution (..., V) after temperature, top-k and top-p filtering."""
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    # Subtract the max before dividing: (z - max) / T <= 0 never overflows to +inf, so a
    # small T (or huge logits) gives a peaked distribution instead of inf - inf = NaN.
    z = logits.float()
    z = (z - z.amax(-1, keepdim=True)) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < z.shape[-1]:
        kth = torch.topk(z, sampling.top_k, dim=-1).values[..., -1:]  # (..., 1)
        z = z.masked_fill(z < kth, float("-inf"))
    probs = torch.softmax(z, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass *before* it already reaches top_p.
        drop = (sorted_p.cumsum(-1) - sorted_p) >= sampling.top_p
        # The most likely token always stays: a top_p below float32's smallest number
        # (1e-129 rounds to 0.0) would otherwise drop every token and leave 0 / 0.
        drop[..., 0] = False
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of a distribution (B, V) -> (B,)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_with_probs(logits: torch.Tensor, sampling: Sampling = GREEDY,
                      generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one sampling path: tokens (B,) from ``logits`` (B, V), and the distribution
    they were drawn from (B, V), or None for greedy (argmax needs no softmax)."""
    check_logits(logits)
    if sampling.greedy:
        return logits.argmax(-1), None
    probs = logits_to_probs(logits, sampling)
    return draw(probs, generator), probs


def sample(logits: torch.Tensor, sampling: Sampling = GREEDY,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V) -> (B,)."""
    return sample_with_probs(logits, sampling, generator)[0]


def check_logits(logits: torch.Tensor) -> None:
    """Refuse logits no distribution can come from: NaN, +inf, or a row all -inf."""
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError("the model produced NaN or +inf logits; check the weights and the "
                         "dtype (fp16 overflows easily: try bf16 or fp32)")
    if torch.isneginf(logits).all(-1).any():
        raise ValueError("every logit of a row is -inf: no token is allowed")


def make_generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    if sampling.greedy or sampling.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def check_prompts(model: Transformer, prompts: list[list[int]], max_new_tokens: int
                  ) -> list[list[int]]:
    """The prompts as lists of ints; ValueError for inputs that would be silently wrong.

    Shapes, types and ranges follow :mod:`infer_lab.validate` (the rules the HTTP server
    uses too): a batch of non-empty prompts of int ids in the vocabulary, an int
    ``max_new_tokens`` >= 0, and room for them all in the model's context.
    """
    prompts = prompt_batch(prompts, model.config.vocab_size)
    max_new_tokens = integer("max_new_tokens", max_new_tokens, lo=0)
    ctx = model.config.max_seq_len
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > ctx:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} "
                         f"exceeds the context of {ctx} tokens; shorten the prompt or ask "
                         "for fewer tokens (nothing is truncated silently)")
    return prompts


def check_decoding(model: Transformer, sampling: Sampling, eos_id: int | None) -> None:
    """A Sampling object (not a dict or a float) and an EOS id in the vocabulary or None."""
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be an infer_lab.Sampling, got {sampling!r}; e.g. "
                         "Sampling(temperature=0.8, top_p=0.95)")
    if eos_id is not None:
        integer("eos_id", eos_id, lo=0, hi=model.config.vocab_size - 1)


def left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, T) left-padded with 0 and positions (B, T) with -1 on the padding."""
    T = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), T, dtype=torch.long)
    pos = torch.full((len(prompts), T), -1, dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):] = torch.tensor(p)
        pos[b, T - len(p):] = torch.arange(len(p))
    return idx.to(device), pos.to(device)


@torch.inference_mode()
def prefill(model: Transformer, prompts: list[list[int]], cache: KVCache) -> torch.Tensor:
    """Run every prompt token through the model once, filling ``cache``. -> (B, V)."""
    idx, pos = left_pad(prompts, model.device)
    return model(idx, cache, pos, last_only=True)[:, -1]


@torch.inference_mode()
def decode_one_token(model: Transformer, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (B, V) for the token after ``tokens`` (B,), attending through ``cache``."""
    return model(tokens[:, None], cache)[:, -1]


def _finished(row: list[int], eos_id: int | None, max_new: int) -> bool:
    return len(row) >= max_new or (eos_id is not None and bool(row) and row[-1] == eos_id)


def decode_steps(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                 sampling: Sampling = GREEDY, eos_id: int | None = None,
                 cache: KVCache | None = None,
                 observers: Sequence[observe.Observer] | None = None
                 ) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) at each step, using a KV cache.

    ``observers`` are told of the request and each step (None: the defaults of
    :mod:`infer_lab.observe`).
    """
    prompts = check_prompts(model, prompts, max_new_tokens)
    check_decoding(model, sampling, eos_id)
    if max_new_tokens == 0:
        return
    if cache is None:
        longest = max(len(p) for p in prompts)
        cache = KVCache.for_model(model, len(prompts), longest + max_new_tokens)
    gen = make_generator(sampling, model.device)
    trace = observe.request(observers, "generate", len(prompts))  # None unless one listens
    try:
        tok = sample(prefill(model, prompts, cache), sampling, gen)
        if trace:
            trace.token()
        yield tok
        for _ in range(max_new_tokens - 1):
            tok = sample(decode_one_token(model, tok, cache), sampling, gen)
            if trace:
                trace.token()
            yield tok
    finally:  # also when the caller stops early (EOS, a stop string)
        if trace:
            trace.done()


def decode_steps_no_cache(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
                          sampling: Sampling = GREEDY) -> Iterator[torch.Tensor]:
    """Like :func:`decode_steps` but recomputing the whole sequence at every step."""
    prompts = check_prompts(model, prompts, max_new_tokens)
    check_decoding(model, sampling, None)
    gen = make_generator(sampling, model.device)
    idx, pos = left_pad(prompts, model.device)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            tok = sample(model(idx, pos=pos, last_only=True)[:, -1], sampling, gen)
            yield tok
            idx = torch.cat([idx, tok[:, None]], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)


def collect(steps: Iterator[torch.Tensor], batch: int, max_new_tokens: int,
            eos_id: int | None = None) -> list[list[int]]:
    """Gather per-row tokens from a step iterator, stopping rows at EOS (kept) or max."""
    out: list[list[int]] = [[] for _ in range(batch)]
    for tok in steps:
        for row, t in zip(out, tok.tolist()):
            if not _finished(row, eos_id, max_new_tokens):
                row.append(t)
        if all(_finished(r, eos_id, max_new_tokens) for r in out):
            break
    return out


def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int,
             sampling: Sampling = GREEDY, eos_id: int | None = None,
             use_cache: bool = True, window: int | None = None,
             observers: Sequence[observe.Observer] | None = None) -> list[list[int]]:
    """New tokens for each prompt (batch >= 1, prompts of any lengths).

    use_cache=False recomputes everything each step (the baseline of lab 01, which is
    not observed); window=W keeps only the last W positions in a ring-buffer cache.
    ``observers``: see :func:`decode_steps`.
    """
    prompts = check_prompts(model, prompts, max_new_tokens)
    if use_cache:
        cache = None
        if window is not None:
            window = integer("window", window, lo=1)
            cache = KVCache.for_model(model, len(prompts), window=window)
        steps = decode_steps(model, prompts, max_new_tokens, sampling, eos_id, cache,
                             observers)
    else:
        if window is not None:
            raise ValueError("window needs use_cache=True")
        steps = decode_steps_no_cache(model, prompts, max_new_tokens, sampling)
    return collect(steps, len(prompts), max_new_tokens, eos_id)
