"""Learned drafts and token trees, the rows issue 18 adds to ``bench speculative``.

For each target with shipped drafts (code-m: EAGLE, Medusa, a distilled code-s; SmolLM2:
EAGLE, one Medusa head, a distilled early exit), batch 1, on held-out prompts:
* plain decoding, greedy and at T = 1 (the baselines);
* each draft as a chain (branching (1,)*k) and as a token tree, greedy; the best EAGLE
  shapes and the distilled chain again at T = 1 (recursive rejection over siblings);
* transformers' assisted generation with the distilled draft (a Transformer, so
  :func:`~infer_lab.hf_export.to_hf` exports it) on the same weights.
Each row reports tokens/s, speedup over plain decoding at the same temperature, alpha,
the mean tokens per target call, alpha per tree depth, the draft's measured cost c (its
seconds per drafted depth over a plain decode step) and the theory beside the measured
speedup. For chains the theory is Leviathan et al.'s (1 - a^(k+1)) / ((1 - a)(kc + 1));
for trees, whose alpha is not one number, it is the measured tokens per call over
(1 + depth * c), both assuming a verify costs one plain step: "of theory" then shows what
the wider verify forward and the bookkeeping cost. ``v`` is what a verify forward did cost
(in plain steps; on a CPU, where these models' weights sit in cache, scoring 3 tokens
costs clearly more than 1), and ``theory(v)`` = tok/call / (v + depth * c). Greedy
outputs are checked to equal plain greedy decoding, token for token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..sampling import GREEDY, Sampling

T1 = Sampling(temperature=1.0, seed=0)
THIRD_PARTY = "third-party code/code-m"  # not "code-m ...": kept out of the best-of ratios


@dataclass(frozen=True)
class Row:
    """One timed configuration: a drafter, a tree shape, a temperature."""

    label: str
    target: str
    make: Callable[[], Any]  # a fresh TreeDrafter per call
    branching: tuple[int, ...]
    sampling: Sampling

    @property
    def chain(self) -> bool:
        return all(b == 1 for b in self.branching)


def _shapes(quick: bool, name: str) -> dict[str, list[tuple[int, ...]]]:
    """Tree shapes per draft kind; chains first. Wider trees pay on a GPU, where the
    verify forward is memory-bound; on a CPU each extra node costs compute. SmolLM2's
    step costs ~20x code-m's: fewer shapes."""
    if quick:
        return {"eagle": [(1, 1), (2, 1)], "medusa": [(2,)], "distilled": [(1, 1)]}
    if name == THIRD_PARTY:
        return {"eagle": [(1, 1, 1)], "distilled": [(1, 1)]}
    if name != "code-m":  # SmolLM2: one Medusa head, so depth 1
        return {"eagle": [(1, 1), (1, 1, 1), (2, 1), (2, 1, 1)], "medusa": [(1,), (3,)],
                "distilled": [(1, 1), (1, 1, 1)]}
    return {"eagle": [(1, 1), (1, 1, 1), (1, 1, 1, 1), (2, 1), (2, 1, 1), (2, 2, 1),
                      (3, 1, 1)],
            "medusa": [(1,), (1, 1), (3,), (3, 2)],
            "distilled": [(1, 1), (1, 1, 1), (2, 1)]}


def _drafters(target, name: str) -> dict[str, Callable[[tuple[int, ...]], Any]]:
    """kind -> (branching -> fresh drafter), for the drafts shipped for ``name``."""
    from ..speculative.eagle import EagleDrafter
    from ..speculative.medusa import MedusaDrafter
    from ..speculative.draft_card import load_draft
    from ..speculative.tree_decode import ModelTreeDrafter

    out = {}
    for kind, make in (("eagle", EagleDrafter), ("medusa", MedusaDrafter),
                       ("distilled", None)):
        try:
            draft, _ = load_draft(kind, target, name)
        except FileNotFoundError:
            continue
        if make is None:
            out[kind] = lambda b, d=draft, s=GREEDY: ModelTreeDrafter(d, b, s)
            out[kind + "@T1"] = lambda b, d=draft: ModelTreeDrafter(d, b, T1)
            out["_model:" + kind] = draft
        else:
            out[kind] = lambda b, d=draft, m=make: m(d, target, b)
            if kind == "eagle":  # Medusa's heads draft greedily only
                out["eagle@T1"] = lambda b, d=draft: EagleDrafter(d, target, b, T1)
    return out


def third_party_prompts(tok, n: int, chars: int, package: str = "tqdm") -> list[list[int]]:
    """The first ``chars`` characters of ``package``'s first ``n`` source files (of those
    longer than 2 x ``chars``): third-party code, which the zoo's corpus (the standard
    library, site-packages excluded) never held, from a package every install has."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return []
    texts = [f.read_text(encoding="utf-8") for f in sorted(Path(spec.origin).parent.rglob("*.py"))]
    return [tok.encode(t[:chars]) for t in texts if len(t) > 2 * chars][:n]


def rows_for(target, name: str, quick: bool, drafts_of: str | None = None
             ) -> tuple[list[Row], dict[str, Any]]:
    """The rows for one target (labelled ``name``; its drafts are those of ``drafts_of``,
    default ``name``) and its draft models (for the transformers row)."""
    drafters = _drafters(target, drafts_of or name)
    rows = []
    for kind, shapes in _shapes(quick, name).items():
        if kind not in drafters:
            continue
        for b in shapes:
            rows.append(Row(f"{name} {kind} {_shape(b)}", name,
                            lambda k=kind, b=b: drafters[k](b), b, GREEDY))
    # at T = 1: the EAGLE chain and tree that pay most greedily on a CPU, the distilled chain
    sampled = (("eagle@T1", (1, 1)), ("eagle@T1", (2, 1)), ("distilled@T1", (1, 1)))
    for kind, b in [] if name == THIRD_PARTY else sampled:
        if kind in drafters:
            rows.append(Row(f"{name} {kind.split('@')[0]} {_shape(b)}, T=1", name,
                            lambda k=kind, b=b: drafters[k](b), b, T1))
    models = {k.split(":")[1]: v for k, v in drafters.items() if k.startswith("_model:")}
    return rows, models


def _shape(b: tuple[int, ...]) -> str:
    return f"chain k={len(b)}" if all(x == 1 for x in b) else f"tree {b}"


def plain_label(name: str, sampling: Sampling) -> str:
    return f"plain ({name})" + ("" if sampling.greedy else ", T=1")


def figures_of(row: Row, outputs: list[tuple[list[int], Any]], sec: float, plain_sec: float,
               n_tok: int) -> dict[str, Any]:
    """One row's figures from its last pass: speed, acceptance, c and the theory."""
    from ..speculative import SpecStats, theoretical_speedup

    total = SpecStats()
    for _, s in outputs:
        total.add(s)
    step = plain_sec / n_tok  # one plain decode step
    depth = len(row.branching)
    rounds = max(total.target_calls, 1)
    c = total.draft_seconds / rounds / depth / step
    v = total.target_seconds / rounds / step  # a verify forward, in plain steps
    a, tpc = total.alpha, total.tokens_per_target_call
    theory = (theoretical_speedup(a, depth, c) if row.chain else tpc / (1 + depth * c))
    speedup = plain_sec / sec
    return {"tokens_per_s": n_tok / sec, "speedup": speedup, "alpha": a,
            "tokens_per_call": tpc, "alpha_by_depth": total.acceptance_by_position(),
            "c": c, "verify_cost": v, "with_verify_cost": tpc / (v + depth * c),
            "theory": theory, "of_theory": speedup / theory,
            "branching": list(row.branching), "temperature": row.sampling.temperature}


def ratios_of(figs: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """The issue's ratios from the rows' figures (a target without drafts: no ratio), and
    which row each best-of ratio came from."""
    ratios: dict[str, float] = {}
    which: dict[str, str] = {}

    def best(key: str, pred) -> dict | None:
        got = [(k, f) for k, f in figs.items() if pred(k, f)]
        if not got:
            return None
        label, f = max(got, key=lambda kv: kv[1]["speedup"])
        which[key] = label
        return f

    def greedy(name: str):
        return lambda k, f: k.startswith(name + " ") and f["temperature"] == 0

    for name, key in (("code-m", "code_m"), ("smollm2-135m", "smollm2")):
        if (f := best(f"spec_speedup_learned_{key}", greedy(name))) is not None:
            ratios[f"spec_speedup_learned_{key}"] = f["speedup"]
    if (f := best("spec_speedup_sampled_code_m",
                  lambda k, f: k.startswith("code-m ") and f["temperature"] > 0)) is not None:
        ratios["spec_speedup_sampled_code_m"] = f["speedup"]
    chain = best("best_chain_code_m", lambda k, f: greedy("code-m")(k, f)
                 and set(f["branching"]) == {1})
    tree = best("best_tree_code_m", lambda k, f: greedy("code-m")(k, f)
                and set(f["branching"]) != {1})
    if chain and tree:
        ratios["tree_vs_chain_code_m"] = tree["speedup"] / chain["speedup"]
    if chain:
        ratios["spec_vs_theory_learned_chain"] = chain["of_theory"]
    return ratios, which


@dataclass
class Target:
    """A target of the learned rows, its prompts and how many tokens each row makes."""

    name: str
    model: Any
    prompts: list[list[int]]
    n_new: int
    rows: list[Row]

    def temperatures(self) -> list[Sampling]:
        """The plain baselines this target's rows need: greedy, and T = 1 if sampled."""
        return [GREEDY] + ([T1] if any(not r.sampling.greedy for r in self.rows) else [])


HF_DISTILLED = "transformers assisted (code-m distilled draft)"


def add_passes(passes, s, sizes, quick: bool) -> list[Target]:
    """Add every learned row (and its plain baselines) to ``passes``: code-m's on the
    bench's prompts (``s``: its Setup), SmolLM2's when its package is installed and a
    draft for it is shipped (half the new tokens: its step costs ~20x code-m's)."""
    import infer_lab

    from ..generate import generate
    from ..hf_export import to_hf
    from ..speculative.tree_decode import tree_speculative_decode
    from ..zoo.data import held_out_prompts

    rows, models = rows_for(s.target, "code-m", quick)
    targets = [Target("code-m", s.target, s.prompts, sizes.n_new, rows)]
    if not quick:  # the same drafts on code none of the models was trained on
        tok = infer_lab.load("code-s", device="cpu", dtype=torch.float32)[1]
        other = third_party_prompts(tok, min(4, sizes.n_prompts), sizes.prompt_chars)
        if other:
            targets.append(Target(THIRD_PARTY, s.target, other, sizes.n_new,
                                  rows_for(s.target, THIRD_PARTY, quick, "code-m")[0]))
    if not quick:
        try:
            smol, smol_tok = infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)
        except (ImportError, FileNotFoundError) as e:
            print(f"SmolLM2 rows skipped: {e}")
        else:
            rows, _ = rows_for(smol, "smollm2-135m", quick)
            if rows:
                targets.append(Target("smollm2-135m", smol,
                                      held_out_prompts(smol_tok, min(4, sizes.n_prompts),
                                                       sizes.prompt_chars),
                                      max(8, sizes.n_new // 2), rows))
            else:
                print("SmolLM2 rows skipped: no draft for smollm2-135m in the zoo")
    for t in targets:
        for sampling in t.temperatures():
            if plain_label(t.name, sampling) in passes.fns:  # the bench's own plain row
                continue
            passes.add(plain_label(t.name, sampling),
                       lambda p, t=t, s=sampling: generate(t.model, [p], t.n_new, s)[0],
                       t.prompts)
        for r in t.rows:
            passes.add(r.label, lambda p, t=t, r=r: tree_speculative_decode(
                t.model, r.make(), p, t.n_new, r.sampling), t.prompts)
        tree_speculative_decode(t.model, t.rows[0].make(), t.prompts[0], 4)  # warm-up
    if "distilled" in models:
        hf_draft, code = to_hf(models["distilled"]), targets[0]
        passes.add(HF_DISTILLED, lambda p: s.hf_target.generate(
            torch.tensor([p]), assistant_model=hf_draft, **s.hf_args), code.prompts)
        s.hf_target.generate(torch.tensor([code.prompts[0]]), assistant_model=hf_draft,
                             **{**s.hf_args, "max_new_tokens": 4, "min_new_tokens": 4})
    return targets


def report(targets: list[Target], passes, sec: dict[str, float]
           ) -> tuple[list[list], dict[str, Any], dict[str, float]]:
    """Table rows, figures per row and the ratios; raises if a greedy row's output
    differs from plain greedy decoding."""
    table, figs = [], {}
    for t in targets:
        n_tok = t.n_new * len(t.prompts)
        for sampling in t.temperatures():
            label = plain_label(t.name, sampling)
            table.append([label, n_tok / sec[label], 1.0, *[""] * 7])
        expect = passes.outputs[plain_label(t.name, GREEDY)][-1]
        for r in t.rows:
            if r.sampling.greedy and any([o[0] for o in out] != expect
                                         for out in passes.outputs[r.label]):
                raise AssertionError(f"{r.label} differs from plain greedy decoding")
            f = figures_of(r, passes.outputs[r.label][-1], sec[r.label],
                           sec[plain_label(t.name, r.sampling)], n_tok)
            figs[r.label] = f
            table.append([r.label, f["tokens_per_s"], f["speedup"], f["alpha"],
                          f["tokens_per_call"], f["c"], f["verify_cost"], f["theory"],
                          f["with_verify_cost"], f["of_theory"]])
    ratios, which = ratios_of(figs)
    if HF_DISTILLED in sec:
        ours, code = "code-m distilled chain k=2", targets[0]
        table.append([HF_DISTILLED, code.n_new * len(code.prompts) / sec[HF_DISTILLED],
                      sec[plain_label("code-m", GREEDY)] / sec[HF_DISTILLED], *[""] * 7])
        if ours in sec:
            ratios["ours_vs_hf_assisted_distilled"] = sec[HF_DISTILLED] / sec[ours]
    return table, {"rows": figs, "best": which}, ratios


HEADERS = ["run", "tokens/s", "speedup", "alpha", "tok/call", "c", "v", "theory", "theory(v)",
           "of theory"]
