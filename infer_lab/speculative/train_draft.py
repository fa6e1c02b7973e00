"""Train a learned draft for a target: ``python -m infer_lab.speculative.train_draft``.

    python -m infer_lab.speculative.train_draft medusa code-m
    python -m infer_lab.speculative.train_draft eagle smollm2-135m --minutes 60

The target is frozen; only the draft (Medusa's heads, EAGLE's layer) learns, through the
zoo's one training loop (:mod:`infer_lab.zoo.loop`: AdamW, warmup + cosine, clipping,
atomic checkpoints that hold the optimizer and the batch generator, so a run cut
anywhere and resumed ends with the weights of an uninterrupted one). The data is the
standard library's source, the zoo's corpus: every machine has it, and its validation
files (never trained on) give the held-out loss and the prompts on which the card's
acceptance rate is measured. ``--minutes`` stops a run early (a checkpoint is written;
run the command again to continue), so a training can span sessions.

At the end the draft's weights (fp16 safetensors) and a card (JSON: the measured
acceptance per depth, the config, the history) are written next to the zoo's models
(:mod:`.draft_card`, which also loads them back).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..zoo import data
from ..zoo.loop import Checkpoint, Run, TrainConfig, adamw, atomic_save, resume, train_loop

KINDS = ("medusa", "eagle", "distilled")
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "weights"
RUNS_DIR = Path.home() / ".cache" / "infer_lab" / "drafts"  # outside the repo


@dataclass
class DraftConfig(TrainConfig):
    """The zoo's recipe, smaller: a draft learns from a frozen target in minutes."""

    steps: int = 1500
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.0
    eval_every: int = 250
    eval_tokens: int = 16384
    checkpoint_minutes: float = 3.0
    bf16: bool = False
    n_heads: int = 4  # Medusa's heads
    draft_d_ff: int | None = None  # EAGLE's MLP width; None: the target's
    feature_tokens: int = 0  # > 0: cache the target's features over this many tokens
    ce_stride: int = 1  # EAGLE's token loss on every s-th position (a large vocabulary)
    draft_vocab: int = 0  # > 0: EAGLE proposes from the most frequent tokens only (FR-Spec)
    token_target: str = "data"  # EAGLE's token loss: the data token, or the target's p
    exit_layer: int = 0  # > 0: the distilled draft is the target's first layers + an adapter
    adapter_rank: int = 256  # ... and its exit adapter's width


# Per target: SmolLM2's forward costs ~20x code-m's, and its 49k-token lm_head ~10x the
# draft layer, so its drafts train on cached features (160k tokens, ~10 min to build at
# 2 threads) with the token loss on a quarter of the positions; its EAGLE layer has half
# the target's MLP width (5.8 MB in fp16, so the zoo stays under 30 MB), and it proposes
# from the 8,192 most frequent training tokens (98.5% of held-out tokens), so a draft step
# reads 19 MB of lm_head instead of 113 MB. Its token loss is the KL from the target's
# distribution (lm_head of the true next feature): trained on the data token, the layer
# agreed with SmolLM2's argmax on 36% of held-out positions in a scratch check (its
# card: alpha 0.19 at depth 4).
PRESETS: dict[str, dict] = {
    "smollm2-135m": {"steps": 1200, "batch_size": 4, "seq_len": 256, "draft_d_ff": 768,
                     "feature_tokens": 163840, "ce_stride": 4, "eval_every": 200,
                     "eval_tokens": 4096, "draft_vocab": 8192, "token_target": "target"},
    # one head (0.7 MB in fp16), its loss on every 8th position: trained with two, the
    # second head's drafts were accepted 1.2% of the time (alpha 0.12 at depth 2, 0.117
    # from the first head), so it did not pay for its 0.7 MB of the zoo's 30 MB
    "smollm2-135m.medusa": {"n_heads": 1, "ce_stride": 8},
    # the first 4 of 30 layers and a rank-128 adapter (0.3 MB): early_exit.py
    "smollm2-135m.distilled": {"ce_stride": 8, "exit_layer": 4, "adapter_rank": 128},
}


def preset(target: str, kind: str) -> DraftConfig:
    """The recipe for a ``kind`` draft of ``target``: the defaults, the target's preset,
    then the target's preset for that kind."""
    return DraftConfig(**{**PRESETS.get(target, {}), **PRESETS.get(f"{target}.{kind}", {})})


def make_draft(kind: str, target: nn.Module, cfg: DraftConfig) -> nn.Module:
    if kind == "medusa":
        from .medusa import MedusaHeads

        return MedusaHeads.for_target(target, cfg.n_heads)
    if kind == "eagle":
        from .eagle import EagleDraft

        return EagleDraft.for_target(target, cfg.draft_d_ff)
    if kind == "distilled":  # DistillSpec: a small model tuned on the target's distributions
        if cfg.exit_layer:  # no smaller model shares the target's tokenizer: carve one out
            from .early_exit import EarlyExitDraft

            return EarlyExitDraft(target, cfg.exit_layer, cfg.adapter_rank).to(
                device=target.device, dtype=target.dtype)
        from ..zoo import load_zoo  # code-s, which shares the zoo's tokenizer

        student = load_zoo("code-s", device=target.device)[0].train()
        if student.config.vocab_size != target.config.vocab_size:
            raise ValueError(f"the distilled draft starts from code-s, whose vocabulary "
                             f"({student.config.vocab_size}) is not the target's "
                             f"({target.config.vocab_size}); set exit_layer for an "
                             "early-exit draft of the target's own first layers")
        return student
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def distilled_loss(student: nn.Module, target: nn.Module, x: torch.Tensor,
                   features: torch.Tensor | None = None, ce_stride: int = 1) -> torch.Tensor:
    """Forward KL to the target's distribution at T = 1 (DistillSpec, Zhou et al. 2024:
    acceptance is 1 - TV(p, q), so a draft is tuned towards the target, not the data)."""
    from ..distill.losses import kd_loss
    from .early_exit import EarlyExitDraft, early_exit_loss

    if isinstance(student, EarlyExitDraft):
        return early_exit_loss(student, target, x, features, ce_stride)
    with torch.no_grad():
        teacher = target(x)  # (B, T, V)
    return kd_loss(student(x), teacher, temperature=1.0)


def draft_loss(kind: str, cfg: DraftConfig | None = None):
    """``(draft, target, x, features=None) -> loss`` of a kind."""
    from functools import partial

    from .eagle import eagle_loss
    from .medusa import medusa_loss

    if kind == "eagle":
        cfg = cfg or DraftConfig()
        return partial(eagle_loss, ce_stride=cfg.ce_stride, token_target=cfg.token_target)
    if kind == "medusa":
        return partial(medusa_loss, ce_stride=(cfg or DraftConfig()).ce_stride)
    return partial(distilled_loss, ce_stride=(cfg or DraftConfig()).ce_stride)


def feature_banks(kind: str, target: nn.Module, train_ids: np.ndarray, valid_ids: np.ndarray,
                  cfg: DraftConfig, run_dir: Path, progress: bool = True):
    """(train bank, valid bank) of the target's features when ``cfg`` caches them, else
    (None, None)."""
    from .features import FeatureBank

    if not cfg.feature_tokens:
        return None, None
    return (FeatureBank.build(target, train_ids, run_dir / "features-train", cfg.seq_len,
                              cfg.feature_tokens, progress=progress),
            FeatureBank.build(target, valid_ids, run_dir / "features-valid", cfg.seq_len,
                              cfg.eval_tokens, progress=progress))


def token_streams(tok, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The train / valid splits of the standard library in ``tok``'s ids, cached."""
    out = []
    for split in ("train", "valid"):
        path = cache_dir / f"{split}.npy"
        if path.exists():
            out.append(np.load(path))
            continue
        ids: list[int] = []
        for f in data.iter_files(split):
            ids.extend(tok.encode(f.text))
            ids.append(tok.eos_id if getattr(tok, "eos_id", None) is not None else 0)
        arr = np.asarray(ids, dtype=np.int32)
        atomic_save(lambda p, a=arr: np.save(p, a), path, suffix=".npy")
        out.append(arr)
    return out[0], out[1]


def held_out_loss(kind: str, target: nn.Module, ids: np.ndarray, cfg: DraftConfig, bank=None):
    """The draft's own objective on fixed validation windows (the same every eval), on
    ``bank``'s cached features when given."""
    loss = draft_loss(kind, cfg)
    n = min(cfg.eval_tokens, len(ids) - 1) // cfg.seq_len if bank is None else len(bank)
    windows = torch.from_numpy(ids[: n * cfg.seq_len].astype(np.int64)).view(n, cfg.seq_len)

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = list(range(i, min(i + cfg.batch_size, n)))
        return (windows[idx], None) if bank is None else bank.windows(idx)

    @torch.no_grad()
    def score(draft: nn.Module) -> float:
        draft.eval()
        vals = [float(loss(draft, target, *batch(i))) for i in range(0, n, cfg.batch_size)]
        draft.train()
        return float(np.mean(vals))

    return score


def train(kind: str, target: nn.Module, target_name: str, train_ids: np.ndarray,
          valid_ids: np.ndarray, cfg: DraftConfig, run_dir: Path, *,
          until: int | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train (or resume) a ``kind`` draft for the frozen ``target`` up to step ``until``
    (default: the last); returns the draft and the run's state."""
    torch.manual_seed(cfg.seed)
    target.eval().requires_grad_(False)
    run_dir.mkdir(parents=True, exist_ok=True)
    draft = make_draft(kind, target, cfg)
    run = Run(draft, adamw(draft.named_parameters(), cfg), torch.Generator().manual_seed(cfg.seed))
    ckpt = Checkpoint(run_dir / "ckpt.pt", every_minutes=cfg.checkpoint_minutes,
                      extra=lambda: {"draft_config": asdict(cfg), "kind": kind,
                                     "target": target_name},
                      restore=lambda ck: _same_run(ck, kind, target_name, cfg))
    train_bank, valid_bank = feature_banks(kind, target, train_ids, valid_ids, cfg, run_dir,
                                           progress)
    if resume(run, ckpt):
        print(f"resumed {kind} for {target_name} at step {run.state['step']}")
    loss = draft_loss(kind, cfg)
    cached = train_bank is not None  # batches are (tokens, features), else (x, y)
    state = train_loop(run, lambda m, b: loss(m, target, b[0], b[1] if cached else None),
                       cfg, train_ids, valid_ids, ckpt, desc=f"{kind} for {target_name}",
                       progress=progress,
                       valid_loss=held_out_loss(kind, target, valid_ids, cfg, valid_bank),
                       until=until, batches=None if train_bank is None else
                       train_bank.batches(cfg.batch_size))
    return draft, state


def _same_run(ck: dict, kind: str, target_name: str, cfg: DraftConfig) -> None:
    if (ck.get("kind"), ck.get("target")) != (kind, target_name) or ck.get(
            "draft_config") != asdict(cfg):
        raise ValueError(f"the checkpoint was written by another run ({ck.get('kind')} for "
                         f"{ck.get('target')}); use another --run-dir or delete it")


def steps_per_minute(kind: str, target: nn.Module, cfg: DraftConfig, ids: np.ndarray,
                     bank=None) -> float:
    """Training steps a minute on this machine, from a 3-step probe (no weights change)."""
    from ..zoo.loop import get_batch

    draft, loss, probe = make_draft(kind, target, cfg), draft_loss(kind, cfg), torch.Generator()
    t0 = time.perf_counter()
    for _ in range(3):
        b = (get_batch(ids, cfg.batch_size, cfg.seq_len, probe.manual_seed(0))[0], None) if \
            bank is None else bank.batches(cfg.batch_size)(probe.manual_seed(0))
        loss(draft, target, *b).backward()
    return 3 * 60 / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    import infer_lab

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("target", help="code-m, or smollm2-135m")
    ap.add_argument("--steps", type=int, help="override the step count")
    ap.add_argument("--lr", type=float, help="override the peak learning rate (min_lr: a tenth)")
    ap.add_argument("--minutes", type=float, help="stop (with a checkpoint) after about this")
    ap.add_argument("--run-dir", type=Path, help=f"checkpoints (default {RUNS_DIR}/...)")
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.target, args.kind)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.lr is not None:
        cfg = replace(cfg, lr=args.lr, min_lr=args.lr / 10)
    run_dir = args.run_dir or RUNS_DIR / f"{args.target}.{args.kind}"
    target, tok = infer_lab.load(args.target, device="cpu", dtype=torch.float32)
    train_ids, valid_ids = token_streams(tok, run_dir)
    until = None
    if args.minutes is not None:
        done = torch.load(run_dir / "ckpt.pt", weights_only=False)["state"]["step"] if (
            run_dir / "ckpt.pt").exists() else 0
        bank = feature_banks(args.kind, target, train_ids, valid_ids, cfg, run_dir)[0]
        until = done + max(1, int(args.minutes * steps_per_minute(args.kind, target, cfg,
                                                                  train_ids, bank)))
    draft, state = train(args.kind, target, args.target, train_ids, valid_ids, cfg, run_dir,
                         until=until)
    if state["step"] < cfg.steps:
        print(f"stopped at step {state['step']} of {cfg.steps}; run again to continue")
        return
    from .draft_card import export

    export(args.kind, args.target, draft, target, tok, cfg, state, args.out_dir,
           token_ids=train_ids)


if __name__ == "__main__":
    main()
