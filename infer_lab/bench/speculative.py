"""Speculative decoding: plain vs draft-model speculation (k = 1..8) vs prompt lookup.

On held-out standard-library prompts, greedy, batch 1, code-m as the target:
* ours plain decoding; ours speculative with code-s drafts for each k, with the measured
  acceptance rate alpha, the cost ratio c (a draft step over a target step, measured) and
  the theoretical speedup (1 - a^(k+1)) / ((1 - a)(k c + 1)) beside the measured one;
* prompt lookup on a code-editing workload (the prompt holds the code being rewritten);
* transformers' assisted generation (``assistant_model``) and ``prompt_lookup_num_tokens``
  on the same weights (through :func:`infer_lab.hf_export.to_hf`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from . import format_table

EDIT_HEADER = "# Original version:\n"
EDIT_MIDDLE = "\n\n# The same code, with the comments removed:\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])


def _prompts(tok, n: int, chars: int) -> list[list[int]]:
    from ..zoo.data import iter_files

    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    return [tok.encode(f.text[:chars]) for f in files]


def _edit_prompts(tok, n: int, chars: int) -> list[list[int]]:
    """Code followed by the start of its rewrite: the continuation mostly repeats it."""
    from ..zoo.data import iter_files

    files = [f for f in iter_files("valid") if len(f.text) > 2 * chars][:n]
    out = []
    for f in files:
        code = f.text[:chars]
        out.append(tok.encode(EDIT_HEADER + code + EDIT_MIDDLE + code[:40]))
    return out


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import infer_lab
    from ..generate import generate
    from ..hf_export import to_hf
    from ..speculative import PromptLookupDrafter, speculative_decode, theoretical_speedup

    n_new = 8 if args.quick else args.new_tokens
    n_prompts = 1 if args.quick else args.prompts
    ks = [1, 2] if args.quick else args.ks
    target, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    draft, _ = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    prompts = _prompts(tok, n_prompts, 160 if args.quick else 600)
    edits = _edit_prompts(tok, n_prompts, 160 if args.quick else 500)
    speculative_decode(target, draft, prompts[0], 4)  # warm-up
    n_tok = n_new * len(prompts)

    plain_s = sum(_time(lambda p=p: generate(target, [p], n_new)) for p in prompts)
    draft_s = sum(_time(lambda p=p: generate(draft, [p], n_new)) for p in prompts)
    c = draft_s / plain_s  # cost of a draft step relative to a target step
    rows = [["plain (code-m)", n_tok / plain_s, 1.0, "", "", ""]]
    figures: dict[str, Any] = {"plain_tokens_per_s": n_tok / plain_s, "cost_ratio_c": c,
                               "speculative": {}}
    best = None
    for k in ks:
        spent, acc, prop = 0.0, 0, 0
        for p in prompts:
            t0 = time.perf_counter()
            _, st = speculative_decode(target, draft, p, n_new, k=k)
            spent += time.perf_counter() - t0
            acc, prop = acc + st.accepted, prop + st.proposed
        alpha = acc / prop if prop else 0.0
        speedup, theory = plain_s / spent, theoretical_speedup(alpha, k, c)
        figures["speculative"][k] = {"tokens_per_s": n_tok / spent, "alpha": alpha,
                                     "speedup": speedup, "theory": theory}
        rows.append([f"code-s draft, k={k}", n_tok / spent, speedup, alpha, theory,
                     speedup / theory])
        if best is None or speedup > best[1]:
            best = (k, speedup, theory)

    edit_plain = sum(_time(lambda p=p: generate(target, [p], n_new)) for p in edits)
    edit_pl, pl_acc = 0.0, []
    for p in edits:
        t0 = time.perf_counter()
        _, st = speculative_decode(target, PromptLookupDrafter(), p, n_new, k=8)
        edit_pl += time.perf_counter() - t0
        pl_acc.append(st.acceptance_rate)
    rows.append(["prompt lookup k=8, editing", n_tok / edit_pl, edit_plain / edit_pl,
                 sum(pl_acc) / len(pl_acc), "", ""])

    hf_t, hf_d = to_hf(target), to_hf(draft)
    hf_args = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                   eos_token_id=None, pad_token_id=0)
    hf_assist = sum(_time(lambda p=p: hf_t.generate(torch.tensor([p]), assistant_model=hf_d,
                                                     **hf_args)) for p in prompts)
    hf_lookup = sum(_time(lambda p=p: hf_t.generate(torch.tensor([p]),
                                                     prompt_lookup_num_tokens=8, **hf_args))
                    for p in edits)
    k_best = best[0]
    ours_best = figures["speculative"][k_best]["tokens_per_s"]
    rows.append(["transformers assisted (code-s)", n_tok / hf_assist, plain_s / hf_assist,
                 "", "", ""])
    rows.append(["transformers prompt lookup, editing", n_tok / hf_lookup,
                 edit_plain / hf_lookup, "", "", ""])
    print(f"greedy, batch 1, {len(prompts)} held-out prompts x {n_new} new tokens; "
          f"cost ratio c = {c:.3f}")
    print(format_table(rows, ["run", "tokens/s", "speedup", "alpha", "theory", "of theory"]))
    ratios = {
        "spec_speedup_best": best[1],
        "spec_best_k": k_best,
        "spec_vs_theory": best[1] / best[2],
        "prompt_lookup_speedup_edit": edit_plain / edit_pl,
        "ours_vs_hf_assisted": ours_best / (n_tok / hf_assist),
        "ours_vs_hf_prompt_lookup": (n_tok / edit_pl) / (n_tok / hf_lookup),
    }
    for name, v in ratios.items():
        print(f"{name}: {v:.3f}")
    figures["hf_assisted_tokens_per_s"] = n_tok / hf_assist
    figures["hf_prompt_lookup_tokens_per_s"] = n_tok / hf_lookup
    return {"figures": figures, "ratios": ratios}
