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
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from . import format_table

EDIT_HEADER = "# Original version:\n"
EDIT_MIDDLE = "\n\n# The same code, with the comments removed:\n"
SELF_DRAFT = "int8 dynamic (fbgemm)"  # the quantized copy with the cheapest step on CPU


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--hybrid-ks", type=int, nargs="+", default=[2, 3, 4, 6])


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


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed(fn, prompts: list[list[int]]) -> tuple[float, list]:
    """Seconds for fn(prompt) over all prompts, and the results."""
    t0 = time.perf_counter()
    out = [fn(p) for p in prompts]
    return time.perf_counter() - t0, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import infer_lab
    from ..generate import generate
    from ..hf_export import to_hf
    from ..speculative import (HybridDrafter, PromptLookupDrafter, SpecStats, quantized_draft,
                               speculative_decode, theoretical_speedup)

    n_new = 8 if args.quick else args.new_tokens
    n_prompts = 1 if args.quick else args.prompts
    ks = [1, 2] if args.quick else args.ks
    hybrid_ks = [2] if args.quick else args.hybrid_ks
    target, tok = infer_lab.load("code-m", device="cpu", dtype=torch.float32)
    draft, _ = infer_lab.load("code-s", device="cpu", dtype=torch.float32)
    qdraft = quantized_draft(target, SELF_DRAFT)
    prompts = held_out_prompts(tok, n_prompts, 160 if args.quick else 600)
    edits = edit_prompts(tok, n_prompts, 160 if args.quick else 500)
    speculative_decode(target, draft, prompts[0], 4)  # warm-up
    generate(qdraft, [prompts[0]], 4)
    n_tok = n_new * len(prompts)

    plain_s, ref = _timed(lambda p: generate(target, [p], n_new)[0], prompts)
    draft_s, _ = _timed(lambda p: generate(draft, [p], n_new), prompts)
    qdraft_s, _ = _timed(lambda p: generate(qdraft, [p], n_new), prompts)
    c, c_self = draft_s / plain_s, qdraft_s / plain_s  # cost of a draft step / a target step
    rows = [["plain (code-m)", n_tok / plain_s, 1.0, "", "", ""]]
    figures: dict[str, Any] = {"plain_tokens_per_s": n_tok / plain_s, "cost_ratio_c": c,
                               "cost_ratio_c_self": c_self, "speculative": {}, "hybrid": {}}

    def spec_rows(label: str, make, k_list: list[int], cost: float | None, into: dict,
                  on=prompts, base_s=plain_s, expect=ref) -> tuple[int, float, float]:
        best = (0, 0.0, 1.0)
        for k in k_list:
            spent, res = _timed(lambda p: speculative_decode(target, make(), p, n_new, k=k), on)
            if [r[0] for r in res] != expect:
                raise AssertionError(f"{label} k={k} differs from plain greedy decoding")
            total = SpecStats()
            for r in res:
                total.add(r[1])
            a = total.alpha  # over all prompts, not a mean of per-prompt alphas
            speedup = base_s / spent
            theory = theoretical_speedup(a, k, cost) if cost is not None else None
            into[k] = {"tokens_per_s": n_tok / spent, "alpha": a, "speedup": speedup,
                       "theory": theory}
            rows.append([f"{label}, k={k}", n_tok / spent, speedup, a,
                         "" if theory is None else theory,
                         "" if theory is None else speedup / theory])
            if speedup > best[1]:
                best = (k, speedup, theory or 1.0)
        return best

    best = spec_rows("code-s draft", lambda: draft, ks, c, figures["speculative"])
    hy = spec_rows("hybrid lookup + code-s", lambda: HybridDrafter(draft), hybrid_ks, None,
                   figures["hybrid"])
    self_k = 2 if args.quick else 4
    figures["self"] = {}
    slf = spec_rows(f"self-draft {SELF_DRAFT}", lambda: qdraft, [self_k], c_self,
                    figures["self"])
    figures["lookup_plain"] = {}
    lk = spec_rows("prompt lookup", PromptLookupDrafter, [8], None, figures["lookup_plain"])

    edit_plain, edit_ref = _timed(lambda p: generate(target, [p], n_new)[0], edits)
    figures["lookup_edit"] = {}
    rows.append(["-- editing workload: plain (code-m)", n_tok / edit_plain, 1.0, "", "", ""])
    ed = spec_rows("prompt lookup, editing", PromptLookupDrafter, [8], None,
                   figures["lookup_edit"], on=edits, base_s=edit_plain, expect=edit_ref)

    hf_t, hf_d = to_hf(target), to_hf(draft)
    hf_args = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                   eos_token_id=None, pad_token_id=0)
    hf_assist, _ = _timed(lambda p: hf_t.generate(torch.tensor([p]), assistant_model=hf_d,
                                                   **hf_args), prompts)
    hf_lookup, _ = _timed(lambda p: hf_t.generate(torch.tensor([p]), prompt_lookup_num_tokens=8,
                                                   **hf_args), edits)
    ours_best = figures["speculative"][best[0]]["tokens_per_s"]
    rows.append(["transformers assisted (code-s)", n_tok / hf_assist, plain_s / hf_assist,
                 "", "", ""])
    rows.append(["transformers prompt lookup, editing", n_tok / hf_lookup,
                 edit_plain / hf_lookup, "", "", ""])
    print(f"greedy, batch 1, {len(prompts)} held-out prompts x {n_new} new tokens, "
          f"{torch.get_num_threads()} threads; cost ratio c = {c:.3f} (code-s), "
          f"{c_self:.3f} ({SELF_DRAFT} copy of code-m); every speculative output equals "
          "plain greedy decoding")
    print(format_table(rows, ["run", "tokens/s", "speedup", "alpha", "theory", "of theory"]))
    ratios = {
        "spec_speedup_best": best[1],
        "spec_best_k": best[0],
        "spec_vs_theory": best[1] / best[2],
        "spec_speedup_hybrid": hy[1],
        "self_spec_speedup": slf[1],
        "prompt_lookup_speedup_plain": lk[1],
        "prompt_lookup_speedup_edit": ed[1],
        "ours_vs_hf_assisted": ours_best / (n_tok / hf_assist),
        "ours_vs_hf_prompt_lookup": figures["lookup_edit"][8]["tokens_per_s"]
        / (n_tok / hf_lookup),
    }
    for name, v in ratios.items():
        print(f"{name}: {v:.3f}")
    alpha = figures["speculative"][best[0]]["alpha"]
    need = _alpha_needed(c, 1.3)
    print(f"limit: with c = {c:.3f} the best possible speedup at alpha = {alpha:.2f} is "
          f"{max(theoretical_speedup(alpha, k, c) for k in range(1, 9)):.2f}x (k = 1..8); "
          f"1.3x needs alpha >= {need:.2f} at this c")
    figures["hf_assisted_tokens_per_s"] = n_tok / hf_assist
    figures["hf_prompt_lookup_tokens_per_s"] = n_tok / hf_lookup
    return {"figures": figures, "ratios": ratios}


def _alpha_needed(c: float, speedup: float) -> float:
    """Smallest alpha (to 0.01) at which some k in 1..8 reaches ``speedup`` at cost c."""
    from ..speculative import theoretical_speedup

    for i in range(101):
        if max(theoretical_speedup(i / 100, k, c) for k in range(1, 9)) >= speedup:
            return i / 100
    return 1.0
