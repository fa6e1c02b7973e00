"""Train a student, with or without a teacher: the distillation loop.

The zoo's recipe and its one training loop (:mod:`infer_lab.zoo.loop`: AdamW, linear
warmup then cosine decay, gradient clipping, atomic checkpoints) with the loss swapped:

    ce          L = CE(s, y)                                  the baseline, no teacher
    kd          L = a * T^2 KL(p_t^T || p_s^T) + (1 - a) * CE  (Hinton et al. 2015)
    reverse_kl  L = a * T^2 KL(p_s^T || p_t^T) + (1 - a) * CE  (MiniLLM, Gu et al. 2023)
    hidden      L_kd + w_h * MSE(h_s W, h_t) over matched blocks (FitNets / TinyBERT)
    sequence    L = CE on text the *teacher wrote* (Kim & Rush 2016): build the
                training stream with :func:`teacher_samples` + :func:`sequence_stream`

with ``a = kd_weight``. Same seed, same batches: students trained with different losses
see exactly the same tokens, so their perplexities compare the losses alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..zoo.loop import (Batch, Checkpoint, Loss, Run, TrainConfig, adamw, evaluate, resume,
                        train_loop)
from .losses import HiddenProjection, hidden_state_loss, kd_loss, match_layers, reverse_kl_loss

LOSSES = ("ce", "kd", "reverse_kl", "hidden", "sequence")


@dataclass
class DistillConfig(TrainConfig):
    """The zoo's training recipe (AdamW, warmup + cosine, clipping: :class:`TrainConfig`)
    at the labs' smaller sizes, plus what distillation adds."""

    steps: int = 300
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 30
    eval_every: int = 50
    eval_tokens: int = 16384
    bf16: bool = False  # autocast matmuls to bf16 (fast only on CPUs with native bf16)
    loss: str = "kd"
    temperature: float = 1.0
    kd_weight: float = 1.0  # share of the teacher's loss; the rest is CE on the data
    hidden_weight: float = 1.0  # weight of the hidden-state MSE (loss "hidden")
    checkpoint_every: int | None = None  # steps; None: at every eval

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.kd_weight <= 1:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError("steps and eval_every must be >= 1")

    @property
    def needs_teacher(self) -> bool:
        return self.loss in ("kd", "reverse_kl", "hidden")


DISTILL_PRESETS: dict[str, DistillConfig] = {
    "ce": DistillConfig(loss="ce"),
    "kd": DistillConfig(loss="kd", temperature=1.0, kd_weight=1.0),
    "kd-t2": DistillConfig(loss="kd", temperature=2.0, kd_weight=0.5),
    "reverse_kl": DistillConfig(loss="reverse_kl", temperature=1.0, kd_weight=1.0),
    "hidden": DistillConfig(loss="hidden", temperature=1.0, kd_weight=1.0),
    "sequence": DistillConfig(loss="sequence"),
    # Seconds on a CPU: tests and the ci scale of the labs.
    "tiny": DistillConfig(steps=8, batch_size=4, seq_len=32, warmup=2, eval_every=4,
                          eval_tokens=512),
}


@dataclass
class DistillResult:
    history: list[dict[str, float]]  # one record per eval: step, train/valid loss, ppl, s
    final_valid_loss: float
    final_valid_ppl: float
    steps: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def capture_blocks(model: nn.Module, indices: list[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs (B, T, d) of blocks ``indices`` during the next forwards."""
    out: list[torch.Tensor] = []
    hooks = [model.layers[i].register_forward_hook(lambda m, a, y: out.append(y))
             for i in indices]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


def _reapply(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Keep pruned weights at zero: the optimizer would otherwise regrow them."""
    if masks:
        with torch.no_grad():
            for name, m in masks.items():
                model.get_submodule(name).weight.mul_(m)


SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (s, t, T) -> L


def distill(student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig,
            train_ids: np.ndarray, valid_ids: np.ndarray, checkpoint_dir: Path | str | None = None,
            callback: Callable[[int, dict], None] | None = None, progress: bool = True,
            masks: dict[str, torch.Tensor] | None = None,
            soft_loss: SoftLoss | None = None) -> DistillResult:
    """Train ``student`` in place on ``train_ids`` with ``cfg.loss``; evaluate on ``valid_ids``.

    teacher: required by kd / reverse_kl / hidden, ignored otherwise (None for "ce").
    checkpoint_dir: write ``distill.pt`` there atomically (at every eval, or every
        ``cfg.checkpoint_every`` steps, and at the end) and resume from it when present.
    callback(step, record): called after each eval, e.g. to redraw a live curve.
    masks: {linear name: bool mask} re-applied after every step (prune, then distill).
    soft_loss(student_logits, teacher_logits, T): the teacher term of loss "kd" and
        "hidden" (default :func:`~infer_lab.distill.losses.kd_loss`; lab 04 passes the
        learner's).
    """
    _check_teacher(student, teacher, cfg)
    torch.manual_seed(cfg.seed)
    loss, proj = _objective(student, teacher, cfg, soft_loss)
    params = list(student.named_parameters())
    if proj is not None:  # the projection learns with the student
        params += [("proj." + n, p) for n, p in proj.named_parameters()]
    run = Run(student, adamw(params, cfg), torch.Generator().manual_seed(cfg.seed),
              params=[p for _, p in params])
    ckpt = _checkpoint(checkpoint_dir, cfg, proj)
    resume(run, ckpt)
    if teacher is not None:
        teacher.eval()
    student.train()
    _reapply(student, masks)
    state = train_loop(run, loss, cfg, train_ids, valid_ids, ckpt,
                       after_step=lambda: _reapply(student, masks), on_eval=callback,
                       desc=f"distill ({cfg.loss})", progress=progress)
    return _result(student, state, cfg, valid_ids)


def _check_teacher(student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig) -> None:
    if cfg.needs_teacher and teacher is None:
        raise ValueError(f"loss {cfg.loss!r} needs a teacher")
    if teacher is not None and cfg.needs_teacher and \
            teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"student and teacher vocabularies differ ({student.config.vocab_size}"
                         f" vs {teacher.config.vocab_size}): logit distillation needs a "
                         "shared tokenizer")


def _objective(student: nn.Module, teacher: nn.Module | None, cfg: DistillConfig,
               soft_loss: SoftLoss | None = None) -> tuple[Loss, nn.Module | None]:
    """The loss the loop minimises, (model, batch) -> L, and the hidden-state projection
    it trains beside the student (loss "hidden"; else None)."""
    pairs = proj = None
    if cfg.loss == "hidden":
        pairs = match_layers(student.config.n_layer, teacher.config.n_layer)
        proj = HiddenProjection(student.config.d_model, teacher.config.d_model)

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        return _loss(model, teacher, proj, pairs, cfg, *batch, soft_loss=soft_loss)

    return loss, proj


def _checkpoint(checkpoint_dir: Path | str | None, cfg: DistillConfig,
                proj: nn.Module | None) -> Checkpoint | None:
    """``distill.pt`` in ``checkpoint_dir``, with the config (a resume must match it) and
    the projection; None without a directory."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / "distill.pt"

    def restore(ck: dict[str, Any]) -> None:
        if ck["config"] != asdict(cfg):
            raise ValueError(f"{path} was written with another config; use a new "
                             "checkpoint_dir or delete it")
        if proj is not None:
            proj.load_state_dict(ck["proj"])

    return Checkpoint(path, every_steps=cfg.checkpoint_every or cfg.eval_every,
                      extra=lambda: {"config": asdict(cfg),
                                     "proj": proj.state_dict() if proj is not None else None},
                      restore=restore)


def _result(student: nn.Module, state: dict[str, Any], cfg: DistillConfig,
            valid_ids: np.ndarray) -> DistillResult:
    student.eval()
    last = state["history"][-1] if state["history"] else None
    vl = last["valid_loss"] if last else evaluate(student, valid_ids, cfg.seq_len,
                                                  cfg.eval_tokens, cfg.bf16)
    return DistillResult(history=state["history"], final_valid_loss=vl,
                         final_valid_ppl=math.exp(vl), steps=state["step"],
                         seconds=state["elapsed"], config=asdict(cfg))


def _loss(student: nn.Module, teacher: nn.Module | None, proj: nn.Module | None,
          pairs: list[tuple[int, int]] | None, cfg: DistillConfig,
          x: torch.Tensor, y: torch.Tensor, soft_loss: SoftLoss | None = None) -> torch.Tensor:
    s_idx = [s for s, _ in pairs] if pairs else []
    t_idx = [t for _, t in pairs] if pairs else []
    with torch.autocast("cpu", torch.bfloat16, enabled=cfg.bf16), \
            capture_blocks(student, s_idx) as hs:
        logits = student(x)  # (B, T, V)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    if not cfg.needs_teacher:
        return ce
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=cfg.bf16), \
            capture_blocks(teacher, t_idx) as ht:
        t_logits = teacher(x)  # (B, T, V)
    soft = (reverse_kl_loss if cfg.loss == "reverse_kl" else soft_loss or kd_loss)(
        logits, t_logits, cfg.temperature)
    loss = cfg.kd_weight * soft + (1 - cfg.kd_weight) * ce
    if cfg.loss == "hidden":
        loss = loss + cfg.hidden_weight * hidden_state_loss(hs, ht, proj)
    return loss


# -- sequence-level distillation (Kim & Rush 2016) ---------------------------------------
def teacher_samples(teacher: nn.Module, tokenizer_or_prompts, n: int, length: int,
                    sampling=None, batch_size: int = 16, progress: bool = True
                    ) -> list[list[int]]:
    """``n`` token sequences of up to ``length`` new tokens, written by ``teacher``.

    tokenizer_or_prompts: a tokenizer (each sample starts from its EOS token, i.e. "a new
    file") or a list of prompts (token-id lists, cycled). Each returned sequence is the
    prompt followed by the teacher's tokens. sampling: an infer_lab Sampling (default
    temperature 1, seeded: the teacher's own distribution, the "sequence-level" target).
    """
    from tqdm.auto import tqdm

    from ..generate import Sampling, generate

    sampling = sampling or Sampling(temperature=1.0, seed=0)
    if isinstance(tokenizer_or_prompts, (list, tuple)):
        prompts = [list(p) for p in tokenizer_or_prompts]
        eos = None
    else:
        eos = tokenizer_or_prompts.eos_id
        prompts = [[eos if eos is not None else 0]]
    if not prompts:
        raise ValueError("give at least one prompt")
    out: list[list[int]] = []
    teacher.eval()
    for start in tqdm(range(0, n, batch_size), desc="teacher samples", disable=not progress):
        batch = [prompts[i % len(prompts)] for i in range(start, min(n, start + batch_size))]
        # Different seeds per batch, else every batch would repeat the first.
        s = replace(sampling, seed=None if sampling.seed is None else sampling.seed + start)
        rows = generate(teacher, batch, length, s, eos_id=None)
        out.extend(p + r for p, r in zip(batch, rows))
    return out


def sequence_stream(samples: list[list[int]], eos_id: int) -> np.ndarray:
    """Teacher samples joined by EOS into one token stream, the format ``distill`` trains on."""
    ids: list[int] = []
    for s in samples:
        ids.extend(s)
        if not s or s[-1] != eos_id:
            ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)
