"""A trained draft's card and weights: measure, write, and load them back.

:func:`export` writes ``<target>.<kind>.safetensors`` (fp16: what users load is what the
card measured) and ``<target>.<kind>.json`` (the card: greedy chain acceptance per depth
on held-out prompts, the recipe, the training history); :func:`load_draft` refuses a
draft trained for a target of another shape before building it, and a file whose weights
do not match the recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..zoo import data
from ..zoo.loop import atomic_save
from .train_draft import WEIGHTS_DIR, DraftConfig, make_draft


def acceptance(kind: str, draft: nn.Module, target: nn.Module, prompts: list[list[int]],
               depth: int = 4, new_tokens: int = 48) -> dict:
    """Greedy chain acceptance of the draft on held-out prompts: alpha and per depth."""
    from .eagle import EagleDrafter
    from .medusa import MedusaDrafter
    from .stats import SpecStats
    from .tree_decode import ModelTreeDrafter, tree_speculative_decode

    make = {"medusa": MedusaDrafter, "eagle": EagleDrafter,
            "distilled": lambda d, t, b: ModelTreeDrafter(d, b)}[kind]
    depth = min(depth, getattr(draft.config, "n_heads", depth))
    stats = SpecStats()
    for p in prompts:
        _, s = tree_speculative_decode(target, make(draft.eval(), target, (1,) * depth), p,
                                       new_tokens)
        stats = stats.add(s)
    return {"alpha": round(stats.alpha, 4), "depth": depth,
            "tokens_per_target_call": round(stats.tokens_per_target_call, 3),
            "acceptance_by_position": [round(a, 4) for a in stats.acceptance_by_position()],
            "prompts": len(prompts), "new_tokens": new_tokens}


def export(kind: str, target_name: str, draft: nn.Module, target: nn.Module, tok,
           cfg: DraftConfig, state: dict, out_dir: Path,
           prompts: list[list[int]] | None = None,
           token_ids: np.ndarray | None = None) -> dict:
    """``<target>.<kind>.safetensors`` (fp16) and ``<target>.<kind>.json`` (the card, its
    acceptance measured on ``prompts``: default, 8 held-out files' first 400 characters)."""
    from safetensors.torch import save_file

    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(p.half().float())  # the card measures the weights users load
    if cfg.draft_vocab and hasattr(draft, "set_vocab"):  # decode-time: no weight changes
        from .eagle import frequent_tokens

        if token_ids is None:
            raise ValueError("a draft vocabulary is chosen from the training tokens: pass "
                             "token_ids")
        draft.set_vocab(frequent_tokens(token_ids, cfg.draft_vocab))
    prompts = data.held_out_prompts(tok, 8, 400) if prompts is None else prompts
    card = {"kind": kind, "target": target_name, "target_config": target.config.to_dict(),
            "params": sum(p.numel() for p in draft.parameters()),
            "acceptance_greedy": acceptance(kind, draft, target, prompts),
            "train_steps": state["step"], "train_minutes": round(state["elapsed"] / 60, 1),
            "train_config": asdict(cfg), "data_rule": data.RULE, "torch": torch.__version__,
            "history": state["history"]}
    stem = f"{target_name}.{kind}"
    tied = getattr(getattr(draft, "config", None), "tie_embeddings", False)
    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
          for k, v in draft.state_dict().items()
          if not (tied and k == "lm_head.weight")}  # a tied head is the embedding: once
    atomic_save(lambda p: save_file(sd, str(p)), out_dir / f"{stem}.safetensors")
    atomic_save(lambda p: p.write_text(json.dumps(card, indent=2)), out_dir / f"{stem}.json")
    print(json.dumps({k: v for k, v in card.items() if k != "history"}, indent=2))
    return card


def load_draft(kind: str, target: nn.Module, target_name: str,
               weights_dir: Path = WEIGHTS_DIR) -> tuple[nn.Module, dict]:
    """A shipped draft for ``target`` (eval mode, the target's dtype) and its card."""
    from safetensors.torch import load_file

    card_path = weights_dir / f"{target_name}.{kind}.json"
    if not card_path.exists():
        raise FileNotFoundError(f"no {kind} draft for {target_name} in {weights_dir}; train "
                                f"one: python -m infer_lab.speculative.train_draft {kind} "
                                f"{target_name}")
    card = json.loads(card_path.read_text())
    keys = ("d_model", "vocab_size", "n_head", "n_kv_head", "head_dim")
    from ..config import ModelConfig

    made_for = ModelConfig.from_dict(card["target_config"])  # resolves the derived fields
    trained = {k: getattr(made_for, k) for k in keys}
    here = {k: getattr(target.config, k) for k in keys}
    if trained != here:  # before building: a clear error, not a shape mismatch
        raise ValueError(f"this {kind} draft was trained for a target with {trained}; this "
                         f"target has {here}")
    draft = make_draft(kind, target, DraftConfig(**card["train_config"]))
    state = load_file(str(weights_dir / f"{target_name}.{kind}.safetensors"))
    if "vocab" in state and hasattr(draft, "set_vocab"):  # EAGLE's draft vocabulary
        draft.set_vocab(state["vocab"])
    missing, unexpected = draft.load_state_dict(state, strict=False)
    tied = getattr(getattr(draft, "config", None), "tie_embeddings", False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise RuntimeError(f"{kind} draft for {target_name}: weights do not match (missing "
                           f"{missing}, unexpected {unexpected})")
    return draft.to(device=target.device, dtype=target.dtype).eval(), card
