"""Speculative decoding: plain vs draft-model speculation (k = 1..8) vs prompt lookup.

On held-out standard-library prompts, greedy, batch 1, code-m as the target:
* ours plain decoding; ours speculative with code-s drafts for each k, with alpha (the
  per-token acceptance probability, estimated as accepted / (accepted + rejections)),
  the cost ratio c (a draft step over a target step, measured) and the theoretical
  speedup (1 - a^(k+1)) / ((1 - a)(k c + 1)) beside the measured one;
* the hybrid draft (prompt lookup where an n-gram of the text so far repeats, code-s
  elsewhere) and self-speculation (a quantized copy of code-m as its own draft);
* prompt lookup on the plain prompts and on a code-editing workload (the prompt holds
  the code being rewritten);
* transformers' assisted generation (``assistant_model``) and ``prompt_lookup_num_tokens``
  on the same weights (through :func:`infer_lab.hf_export.to_hf`).
Every speculative output is checked to equal plain greedy decoding, token for token.
Each row is one pass over all prompts; all rows alternate, and each figure is the
median of ``--repeats`` passes (3), so :mod:`infer_lab.bench.load` can flag rows whose
passes disagree.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from . import format_table, interleaved_times, median

EDIT_HEADER = "# Original version:\n"
EDIT_MIDDLE = "\n\n# The same code, with the comments removed:\n"
SELF_DRAFT = "int8 dynamic (fbgemm)"  # the quantized copy with the cheapest step on CPU


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--hybrid-ks", type=int, nargs="+", default=[2, 3, 4, 6])
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes over the prompts per row, all rows alternated (3)")


def held_out_prompts(tok, n: int, chars: int) -> list[list[int]]:
    from ..zoo.data import iter_files

    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    return [tok.encode(f.text[:chars]) for f in files]


def edit_prompts(tok, n: int, chars: int) -> list[list[int]]:
    """Code followed by the start of its rewrite: the continuation mostly repeats it."""
    from ..zoo.data import iter_files

    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    out = []
    for f in files:
        code = f.text[:chars]
        out.append(tok.encode(EDIT_HEADER + code + EDIT_MIDDLE + code[:40]))
    return out


PLAIN = "plain (code-m)"
EDIT_PLAIN = "-- editing workload: plain (code-m)"
DRAFT_ALONE = "code-s alone (cost ratio c)"  # timed for c, not a table row
SELF_ALONE = f"{SELF_DRAFT} alone (cost ratio c_self)"


class Passes:
    """Rows to time, each one pass of a function over its prompts, and their outputs.

    Every pass of every row keeps its outputs, so each speculative output can be checked
    against plain greedy decoding after the timing, outside the timed calls.
    """

    def __init__(self) -> None:
        self.fns: dict[str, Callable[[], None]] = {}
        self.outputs: dict[str, list[list[Any]]] = {}

    def add(self, label: str, fn: Callable[[list[int]], Any], on: list[list[int]]) -> None:
        self.outputs[label] = []
        self.fns[label] = lambda: self.outputs[label].append([fn(p) for p in on])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    import infer_lab
    from ..generate import generate
    from ..hf_export import to_hf
    from ..speculative import (HybridDrafter, PromptLookupDrafter, SpecStats, quantized_draft,
                               speculative_decode, theoretical_speedup)

    n_new = 8 if args.quick else args.new_tokens
    n_prompts = 1 if args.quick else args.prompts
    ks = [1, 2] if args.quick else args.ks
    hybrid_ks = [2] if args.quick else args.hybrid_ks
    repeats = 1 if args.quick else args.repeats
    self_k = 2 if args.quick else 4
    target, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    draft, _ = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    qdraft = quantized_draft(target, SELF_DRAFT)
    prompts = held_out_prompts(tok, n_prompts, 160 if args.quick else 600)
    edits = edit_prompts(tok, n_prompts, 160 if args.quick else 500)
    hf_t, hf_d = to_hf(target), to_hf(draft)
    hf_args = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                   eos_token_id=None, pad_token_id=0)
    # Warm-up on a few tokens: one-off costs do not grow with the tokens, and a full
    # warm-up pass of every row would double the bench.
    speculative_decode(target, draft, prompts[0], 4)
    generate(qdraft, [prompts[0]], 4)
    for extra in ({"assistant_model": hf_d}, {"prompt_lookup_num_tokens": 8}):
        hf_t.generate(torch.tensor([prompts[0]]), **{**hf_args, "max_new_tokens": 4,
                                                      "min_new_tokens": 4}, **extra)
    n_tok = n_new * len(prompts)

    # (label, drafter factory, ks, cost ratio for theory, figures key, workload, baseline)
    groups = [("code-s draft", lambda: draft, ks, DRAFT_ALONE, "speculative", prompts, PLAIN),
              ("hybrid lookup + code-s", lambda: HybridDrafter(draft), hybrid_ks, None,
               "hybrid", prompts, PLAIN),
              (f"self-draft {SELF_DRAFT}", lambda: qdraft, [self_k], SELF_ALONE, "self",
               prompts, PLAIN),
              ("prompt lookup", PromptLookupDrafter, [8], None, "lookup_plain", prompts, PLAIN),
              ("prompt lookup, editing", PromptLookupDrafter, [8], None, "lookup_edit", edits,
               EDIT_PLAIN)]
    passes = Passes()
    passes.add(PLAIN, lambda p: generate(target, [p], n_new)[0], prompts)
    passes.add(DRAFT_ALONE, lambda p: generate(draft, [p], n_new), prompts)
    passes.add(SELF_ALONE, lambda p: generate(qdraft, [p], n_new), prompts)
    for label, make, k_list, _, _, on, _ in groups:
        if on is edits:
            passes.add(EDIT_PLAIN, lambda p: generate(target, [p], n_new)[0], edits)
        for k in k_list:
            passes.add(f"{label}, k={k}", lambda p, make=make, k=k: speculative_decode(
                target, make(), p, n_new, k=k), on)
    hf_assisted, hf_lookup = "transformers assisted (code-s)", "transformers prompt lookup, editing"
    passes.add(hf_assisted, lambda p: hf_t.generate(torch.tensor([p]), assistant_model=hf_d,
                                                    **hf_args), prompts)
    passes.add(hf_lookup, lambda p: hf_t.generate(torch.tensor([p]), prompt_lookup_num_tokens=8,
                                                  **hf_args), edits)
    # Every row alternates with every other (A B C ... A B C ...): a slow phase of a busy
    # machine is spread over all rows instead of landing on one, and each row's repeats
    # feed the spread check of infer_lab.bench.load.
    with tqdm(total=len(passes.fns) * repeats, desc="speculative bench",
              disable=args.quick) as bar:
        times = interleaved_times(passes.fns, repeats, 0, "cpu", bar)
    sec = {label: median(t) for label, t in times.items()}
    cost = {DRAFT_ALONE: sec[DRAFT_ALONE] / sec[PLAIN], SELF_ALONE: sec[SELF_ALONE] / sec[PLAIN]}
    c, c_self = cost[DRAFT_ALONE], cost[SELF_ALONE]  # a draft step / a target step
    rows = [[PLAIN, n_tok / sec[PLAIN], 1.0, "", "", ""]]
    figures: dict[str, Any] = {"plain_tokens_per_s": n_tok / sec[PLAIN], "cost_ratio_c": c,
                               "cost_ratio_c_self": c_self, "repeats": repeats}
    best: dict[str, tuple[int, float, float]] = {}  # figures key -> (k, speedup, theory)
    for label, _, k_list, cost_key, key, on, base in groups:
        if base == EDIT_PLAIN:
            rows.append([EDIT_PLAIN, n_tok / sec[EDIT_PLAIN], 1.0, "", "", ""])
        expect = passes.outputs[base][-1]
        figures[key], best[key] = {}, (0, 0.0, 1.0)
        for k in k_list:
            row = f"{label}, k={k}"
            if any([r[0] for r in out] != expect for out in passes.outputs[row]):
                raise AssertionError(f"{row} differs from plain greedy decoding")
            total = SpecStats()
            for r in passes.outputs[row][-1]:
                total.add(r[1])
            a = total.alpha  # over all prompts, not a mean of per-prompt alphas
            speedup = sec[base] / sec[row]
            theory = theoretical_speedup(a, k, cost[cost_key]) if cost_key else None
            figures[key][k] = {"tokens_per_s": n_tok / sec[row], "alpha": a,
                               "speedup": speedup, "theory": theory}
            rows.append([row, n_tok / sec[row], speedup, a, "" if theory is None else theory,
                         "" if theory is None else speedup / theory])
            if speedup > best[key][1]:
                best[key] = (k, speedup, theory or 1.0)
    rows.append([hf_assisted, n_tok / sec[hf_assisted], sec[PLAIN] / sec[hf_assisted],
                 "", "", ""])
    rows.append([hf_lookup, n_tok / sec[hf_lookup], sec[EDIT_PLAIN] / sec[hf_lookup],
                 "", "", ""])
    print(f"greedy, batch 1, {len(prompts)} held-out prompts x {n_new} new tokens, "
          f"{torch.get_num_threads()} threads, median of {repeats} passes, rows alternated; "
          f"cost ratio c = {c:.3f} (code-s), {c_self:.3f} ({SELF_DRAFT} copy of code-m); "
          "every speculative output equals plain greedy decoding")
    print(format_table(rows, ["run", "tokens/s", "speedup", "alpha", "theory", "of theory"]))
    spec = best["speculative"]
    ratios = {
        "spec_speedup_best": spec[1],
        "spec_best_k": spec[0],
        "spec_vs_theory": spec[1] / spec[2],
        "spec_speedup_hybrid": best["hybrid"][1],
        "self_spec_speedup": best["self"][1],
        "prompt_lookup_speedup_plain": best["lookup_plain"][1],
        "prompt_lookup_speedup_edit": best["lookup_edit"][1],
        "ours_vs_hf_assisted": sec[hf_assisted] / sec[f"code-s draft, k={spec[0]}"],
        "ours_vs_hf_prompt_lookup": sec[hf_lookup] / sec["prompt lookup, editing, k=8"],
    }
    for name, v in ratios.items():
        print(f"{name}: {v:.3f}")
    alpha = figures["speculative"][spec[0]]["alpha"]
    need = _alpha_needed(c, 1.3)
    print(f"limit: with c = {c:.3f} the best possible speedup at alpha = {alpha:.2f} is "
          f"{max(theoretical_speedup(alpha, k, c) for k in range(1, 9)):.2f}x (k = 1..8); "
          f"1.3x needs alpha >= {need:.2f} at this c")
    figures["hf_assisted_tokens_per_s"] = n_tok / sec[hf_assisted]
    figures["hf_prompt_lookup_tokens_per_s"] = n_tok / sec[hf_lookup]
    return {"figures": figures, "ratios": ratios, "timings": times}


def _alpha_needed(c: float, speedup: float) -> float:
    """Smallest alpha (to 0.01) at which some k in 1..8 reaches ``speedup`` at cost c."""
    from ..speculative import theoretical_speedup

    for i in range(101):
        if max(theoretical_speedup(i / 100, k, c) for k in range(1, 9)) >= speedup:
            return i / 100
    return 1.0
