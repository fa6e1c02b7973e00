"""Cascades and routing: answer with a small model, escalate to a large one when unsure.

FrugalGPT (Chen et al. 2023) calls models in order of cost and stops at the first answer
a scorer trusts; RouteLLM (Ong et al. 2024) instead picks one model *before* calling any,
from features of the request. Both trade quality for cost along one threshold:

    cascade:  cost = c_small + P(escalate) * c_large      (the small model always runs)
    router:   cost = P(small) * c_small + P(large) * c_large

Here the task is next-line completion on held-out code (:mod:`infer_lab.quality`'s exact
match), the small model code-s and the large code-m. The cascade's confidence is the
small model's mean log-probability of the line it wrote (greedy, so the log of each
chosen token's top probability); the router is a logistic regression on features of the
prompt alone, trained on one half of the samples and scored on the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Answers:
    """One model's greedy next lines, whether each is exactly right, and its confidence."""

    lines: list[str]
    correct: list[bool]
    confidence: list[float]  # mean log-probability of the tokens of the line written


@torch.inference_mode()
def lines_with_confidence(model, tokenizer, prefixes: Sequence[str], max_line_tokens: int = 48,
                          context_tokens: int = 384, batch_size: int = 16
                          ) -> tuple[list[str], list[float]]:
    """Greedy next lines (as :func:`~infer_lab.quality.greedy_next_lines` writes them) and
    each one's mean log-probability over the tokens it took, read off the same logits."""
    from ..generate import decode_one_token, prefill
    from ..kv_cache import KVCache
    from ..quality import _line_done
    from ..tokenizer import StreamDecoder

    context_tokens = min(context_tokens, model.config.max_seq_len - max_line_tokens)
    lines, confs = [], []
    for i in range(0, len(prefixes), batch_size):
        group = prefixes[i:i + batch_size]
        prompts = [tokenizer.encode(p)[-context_tokens:] or [tokenizer.eos_id or 0]
                   for p in group]
        cache = KVCache.for_model(model, len(group), max(map(len, prompts)) + max_line_tokens)
        decoders = [StreamDecoder(tokenizer) for _ in group]
        texts, logps = [""] * len(group), [[] for _ in group]
        logits = prefill(model, prompts, cache)  # (B, V)
        for _ in range(max_line_tokens):
            logp = F.log_softmax(logits.float(), -1)  # (B, V)
            best, tok = logp.max(-1)  # (B,), (B,)
            for r, (t, lp) in enumerate(zip(tok.tolist(), best.tolist())):
                if not _line_done(texts[r]):
                    texts[r] += decoders[r].push(t)
                    logps[r].append(lp)
            if all(_line_done(t) for t in texts):
                break
            logits = decode_one_token(model, tok, cache)
        lines += [t.lstrip().split("\n", 1)[0].strip() for t in texts]
        confs += [sum(lp) / max(1, len(lp)) for lp in logps]
    return lines, confs


def answer(model, tokenizer, samples) -> Answers:
    """``model``'s greedy next line for every sample, scored and with its confidence."""
    lines, conf = lines_with_confidence(model, tokenizer, [s.prefix for s in samples])
    return Answers(lines, [ln == s.target for ln, s in zip(lines, samples)], conf)


@dataclass(frozen=True)
class Point:
    """One policy setting on the quality-cost plane (cost relative to always-large)."""

    threshold: float
    quality: float  # exact match
    cost: float  # per request, in units of one large-model answer
    escalated: float  # share of requests that reached the large model


def cascade_curve(small: Answers, large: Answers, cost_small: float,
                  thresholds: Sequence[float] | None = None) -> list[Point]:
    """Escalate when the small model's confidence is below the threshold: the answer is
    the large model's, and both were paid for. ``cost_small``: the small model's cost
    per answer over the large one's (measured: seconds per answer)."""
    if not 0 <= cost_small:
        raise ValueError(f"cost_small must be >= 0, got {cost_small}")
    if len(small.correct) != len(large.correct) or not small.correct:
        raise ValueError("the two models must answer the same, non-empty set of samples")
    conf = small.confidence
    if thresholds is None:  # every distinct cut, plus never and always escalating
        thresholds = [-math.inf, *sorted(set(conf)), math.inf]
    n, out = len(conf), []
    for t in thresholds:
        up = [c < t for c in conf]
        right = sum(lg if u else sm for u, sm, lg in zip(up, small.correct, large.correct))
        out.append(Point(t, right / n, cost_small + sum(up) / n, sum(up) / n))
    return out


def best_saving(points: Sequence[Point], large_quality: float, max_drop: float = 0.01
                ) -> tuple[float, Point | None]:
    """The largest cost saving over always-large (cost 1) among settings whose quality
    is at least (1 - ``max_drop``) of the large model's; (0, None) if none is."""
    ok = [p for p in points if p.quality >= (1 - max_drop) * large_quality]
    if not ok:
        return 0.0, None
    p = min(ok, key=lambda p: p.cost)
    return max(0.0, 1 - p.cost), p


# -- a learned router on request features (RouteLLM's idea, a logistic regression) ---------
def request_features(prefix: str) -> list[float]:
    """What a router can see before any model runs: the shape of the prompt's last lines."""
    lines = prefix.splitlines() or [""]
    last = lines[-1]
    indent = len(last) - len(last.lstrip())
    return [math.log1p(len(prefix)), len(last.strip()) / 80, indent / 16,
            float(last.rstrip().endswith(":")), float(last.strip().startswith(("def ", "class "))),
            float(last.strip().startswith(("return", "raise"))),
            float("(" in last and ")" not in last), float(last.strip().startswith("@")),
            sum(len(x.strip()) == 0 for x in lines[-5:]) / 5]


def fit_router(features: list[list[float]], small_ok: list[bool], steps: int = 300,
               lr: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """P(the small model's answer is good enough | request features), by logistic
    regression (full-batch gradient descent on the log-loss)."""
    if not features or len(features) != len(small_ok):
        raise ValueError("the router needs one label per feature row, and at least one row")
    torch.manual_seed(seed)
    x = torch.tensor(features, dtype=torch.float32)  # (N, F)
    y = torch.tensor(small_ok, dtype=torch.float32)  # (N,)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(lin((x - mean) / std)[:, 0], y).backward()
        opt.step()

    class Router(torch.nn.Module):
        def forward(self, feats: list[list[float]]) -> torch.Tensor:
            z = (torch.tensor(feats, dtype=torch.float32) - mean) / std
            return torch.sigmoid(lin(z)[:, 0]).detach()  # (N,) P(small suffices)

    return Router()


def router_curve(p_small: Sequence[float], small: Answers, large: Answers, cost_small: float,
                 thresholds: Sequence[float] | None = None) -> list[Point]:
    """Send a request to the small model alone when P(small suffices) >= the threshold,
    else to the large model alone: one model per request."""
    if thresholds is None:
        thresholds = [-math.inf, *sorted(set(p_small)), math.inf]
    n, out = len(p_small), []
    for t in thresholds:
        small_ones = [p >= t for p in p_small]
        right = sum(sm if s else lg for s, sm, lg in zip(small_ones, small.correct,
                                                           large.correct))
        k = sum(small_ones)
        out.append(Point(t, right / n, (k * cost_small + (n - k)) / n, (n - k) / n))
    return out
