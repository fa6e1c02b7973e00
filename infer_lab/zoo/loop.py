"""One training loop for every model the package trains: the zoo and distilled students.

nanoGPT's recipe at toy scale, with the objective as an argument:

    for step in range(start, steps):          start: 0, or where the checkpoint stopped
        lr = warmup, then cosine decay         (Loshchilov & Hutter 2017)
        x, y = random windows of the training stream, drawn from a checkpointed generator
        L = loss(model, (x, y))                next-token CE for the zoo, KD etc. for distill
        backward; clip ||g|| <= grad_clip; AdamW step (Loshchilov & Hutter 2019); after_step()
        every eval_every steps and at the end: held-out CE -> history -> on_eval(step, record)
        every N steps or M minutes, and at the end: an atomic checkpoint

A checkpoint holds the weights, the optimizer, the batch generator and the history, so a
run cut anywhere and resumed ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]  # (B, T) inputs, (B, T) next tokens
Loss = Callable[[nn.Module, Batch], torch.Tensor]  # (model, batch) -> scalar to minimise


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_tokens: int = 65536
    checkpoint_minutes: float = 5.0
    seed: int = 1337
    bf16: bool = True  # autocast matmuls to bf16 where the CPU has native support


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to ``tc.lr`` over ``tc.warmup`` steps, then cosine decay to ``min_lr``."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def get_batch(tokens: np.ndarray, batch: int, seq: int, gen: torch.Generator) -> Batch:
    """``batch`` random windows of ``seq`` tokens and the tokens that follow them."""
    ix = torch.randint(len(tokens) - seq - 1, (batch,), generator=gen).tolist()
    x = torch.from_numpy(np.stack([tokens[i:i + seq] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + seq] for i in ix]).astype(np.int64))
    return x, y


def next_token_loss(model: nn.Module, batch: Batch, bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``batch``: the zoo's objective."""
    x, y = batch
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def evaluate(model: nn.Module, tokens: np.ndarray, seq: int, max_tokens: int | None,
             bf16: bool = False) -> float:
    """Mean next-token cross-entropy (nats) over consecutive windows of ``tokens``."""
    model.eval()
    n = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
    total, count = 0.0, 0
    for i in range(0, n - 1, seq):
        j = min(i + seq, n)
        x = torch.from_numpy(tokens[i:j].astype(np.int64))[None]
        y = torch.from_numpy(tokens[i + 1:j + 1].astype(np.int64))[None]
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def atomic_save(write: Callable[[Path], Any], path: Path, suffix: str = ".tmp") -> None:
    """Write to a temporary file then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial" + suffix)
    write(tmp)
    os.replace(tmp, path)


def adamw(named_params: Iterable[tuple[str, nn.Parameter]], tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW, betas (0.9, 0.95), weight decay on matrices only: norms' gains and biases
    are not capacity, decaying them only pulls the activations' scale down."""
    params = [p for _, p in named_params]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                               "weight_decay": tc.weight_decay},
                              {"params": [p for p in params if p.dim() < 2],
                               "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95))


@dataclass
class Run:
    """What a training run updates and saves: model, optimizer, batch generator, progress."""

    model: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    params: list[nn.Parameter] | None = None  # clipped together; None: the model's
    state: dict[str, Any] = field(
        default_factory=lambda: {"step": 0, "elapsed": 0.0, "history": []})

    def __post_init__(self) -> None:
        if self.params is None:
            self.params = list(self.model.parameters())


def _no_extra() -> dict[str, Any]:
    return {}


def _nothing_to_restore(ck: dict[str, Any]) -> None:
    return None


@dataclass
class Checkpoint:
    """Where a run saves itself, how often (and always at the last step), and what it adds.

    extra(): entries saved beside model / opt / gen / state (a config, a projection).
    restore(ck): reads them back, before the weights are loaded; raise to refuse a
        checkpoint (written with another config, say) and leave the model untouched.
    """

    path: Path
    every_steps: int | None = None
    every_minutes: float | None = None
    extra: Callable[[], dict[str, Any]] = _no_extra
    restore: Callable[[dict[str, Any]], None] = _nothing_to_restore

    def due(self, step: int, last: int, since: float) -> bool:
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        by_time = self.every_minutes is not None and since > self.every_minutes * 60
        return by_steps or by_time or step == last

    def save(self, run: Run) -> None:
        ck = {"model": run.model.state_dict(), "opt": run.opt.state_dict(),
              "gen": run.gen.get_state(), "state": run.state, **self.extra()}
        atomic_save(lambda p: torch.save(ck, p), self.path)


def resume(run: Run, checkpoint: Checkpoint | None) -> bool:
    """Load ``checkpoint`` into ``run`` when it exists; whether it did."""
    if checkpoint is None or not checkpoint.path.exists():
        return False
    ck = torch.load(checkpoint.path, weights_only=False)
    checkpoint.restore(ck)
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["opt"])
    run.gen.set_state(ck["gen"])
    run.state = ck["state"]
    return True


def default_record(step: int, train_loss: float, valid_loss: float,
                   seconds: float) -> dict[str, float]:
    """One history entry per evaluation."""
    return {"step": step, "train_loss": train_loss, "valid_loss": valid_loss,
            "valid_ppl": math.exp(valid_loss), "seconds": seconds}


def _step(run: Run, loss: Loss, batch: Batch, lr: float, grad_clip: float,
          after_step: Callable[[], None] | None) -> float:
    """One optimizer step on ``batch``; returns the loss before it."""
    for g in run.opt.param_groups:
        g["lr"] = lr
    value = loss(run.model, batch)
    run.opt.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(run.params, grad_clip)
    run.opt.step()
    if after_step is not None:
        after_step()  # e.g. re-apply pruning masks the step regrew
    return value.item()


def train_loop(run: Run, loss: Loss, tc: TrainConfig, train_ids: np.ndarray,
               valid_ids: np.ndarray, checkpoint: Checkpoint | None = None,
               after_step: Callable[[], None] | None = None,
               record: Callable[[int, float, float, float], dict] = default_record,
               on_eval: Callable[[int, dict], None] | None = None,
               desc: str = "train", progress: bool = True,
               valid_loss: Callable[[nn.Module], float] | None = None,
               until: int | None = None,
               batches: Callable[[torch.Generator], Batch] | None = None) -> dict[str, Any]:
    """Train ``run`` from ``run.state["step"]`` to ``tc.steps``; returns the final state.

    record(step, train_loss, valid_loss, seconds) makes each history entry; on_eval(step,
    entry) is called after it, once that step's checkpoint is written. ``seconds`` counts
    training only: evaluation time is not training time. ``valid_loss(model)`` replaces
    the held-out next-token loss for models that are not language models themselves (a
    draft's heads, scored on their own objective). ``until`` stops early at that step,
    with a checkpoint, without changing the schedule (a run split across sessions).
    ``batches(gen)`` replaces the random windows of ``train_ids`` (a draft trained on the
    target's cached features draws windows and their features together).
    """
    from tqdm.auto import tqdm

    state = run.state
    t_last = t_saved = time.time()
    last = tc.steps if until is None else min(until, tc.steps)
    bar = tqdm(range(state["step"], last), initial=state["step"], total=tc.steps,
               desc=desc, disable=not progress)
    for step in bar:
        batch = (get_batch(train_ids, tc.batch_size, tc.seq_len, run.gen) if batches is None
                 else batches(run.gen))  # (B, T) each, or (B, T) and (B, T, C)
        value = _step(run, loss, batch, lr_at(step, tc), tc.grad_clip, after_step)
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] = done = step + 1
        bar.set_postfix(loss=f"{value:.3f}")
        entry = None
        if done % tc.eval_every == 0 or done == tc.steps:
            vl = (evaluate(run.model, valid_ids, tc.seq_len, tc.eval_tokens, tc.bf16)
                  if valid_loss is None else valid_loss(run.model))
            entry = record(done, value, vl, state["elapsed"])
            state["history"].append(entry)
            t_last = time.time()
        if checkpoint is not None and checkpoint.due(done, last, time.time() - t_saved):
            checkpoint.save(run)
            t_saved = time.time()
        if entry is not None and on_eval is not None:
            on_eval(done, entry)
    return state
