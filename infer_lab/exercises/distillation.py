"""Exercises of lab 04 (distillation).

* soft_targets: the teacher's distribution at temperature T (Hinton et al. 2015),
  ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` over the vocabulary (the last axis).
  T > 1 flattens it and shows the "dark knowledge" in the small probabilities.
* kd_loss: the temperature-scaled distillation loss
  ``T^2 * KL(p_teacher^T || p_student^T)``, the KL summed over the vocabulary and
  averaged over positions. The ``T^2`` keeps the gradient's size independent of T:
  the gradient of the soft loss with respect to a student logit scales as ``1 / T^2``.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from . import catalog
from .checker import Case, Exercise, Mistake

LAB = catalog.DISTILLATION  # the notebook's name


# -- references -------------------------------------------------------------------------
def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last axis (the vocabulary)."""
    return torch.softmax(logits / temperature, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T, mean over positions (a scalar).

    Logits are (..., V). log_softmax, not log(softmax), so tiny probabilities stay finite.
    """
    T = temperature
    log_p_t = F.log_softmax(teacher_logits / T, dim=-1)  # (..., V)
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...,) one KL per position
    return T * T * kl.mean()


# -- wrong answers a learner might write ----------------------------------------------------
def _soft_times_t(logits, temperature):
    return torch.softmax(logits * temperature, dim=-1)


def _soft_no_t(logits, temperature):
    return torch.softmax(logits, dim=-1)


def _soft_dim0(logits, temperature):
    return torch.softmax(logits / temperature, dim=0)


def _kd_no_t2(s, t, T):
    return kd_loss(s, t, T) / (T * T)


def _kd_reverse(s, t, T):
    return kd_loss(t, s, T)  # KL(student || teacher)


def _kd_student_no_t(s, t, T):
    log_p_t = F.log_softmax(t / T, dim=-1)
    log_p_s = F.log_softmax(s, dim=-1)  # the student at temperature 1
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def _kd_kl_div_mean(s, t, T):
    # What F.kl_div(reduction="mean") computes: the mean over the vocabulary too.
    log_p_t, log_p_s = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).mean()


def _kd_sum_positions(s, t, T):
    log_p_t = F.log_softmax(t / T, dim=-1)
    log_p_s = F.log_softmax(s / T, dim=-1)
    return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum()


# -- cases ------------------------------------------------------------------------------
def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_soft_case(rng: random.Random) -> Case:
    shape = rng.choice([(rng.randint(2, 6), rng.randint(2, 50)),
                        (rng.randint(1, 3), rng.randint(2, 5), rng.randint(2, 30))])
    scale = rng.choice([0.5, 2.0, 5.0])
    return Case((_randn(rng.randrange(2**31), *shape) * scale,
                 rng.choice([0.5, 2.0, 3.0, 4.0, 10.0])))


def _kd_case(shape: tuple[int, ...], T: float, seed: int) -> Case:
    # Teacher logits spread wider than the student's: a confident teacher, as in practice.
    return Case((_randn(seed, *shape), 3 * _randn(seed + 1000, *shape), T))


def _random_kd_case(rng: random.Random) -> Case:
    shape = rng.choice([(rng.randint(2, 8), rng.randint(2, 40)),
                        (rng.randint(1, 3), rng.randint(2, 6), rng.randint(2, 40))])
    return _kd_case(shape, rng.choice([0.5, 2.0, 3.0, 4.0, 8.0]), rng.randrange(2**31))


EXERCISES = [
    Exercise(
        "soft_targets", LAB, soft_targets,
        fixed_cases=[Case((torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 5.0]]), 2.0)),
                     Case((_randn(0, 4, 10) * 3, 4.0)), Case((_randn(1, 3, 8), 0.5)),
                     Case((_randn(2, 2, 5, 16) * 2, 1.0)), Case((_randn(3, 6, 100) * 4, 10.0))],
        random_case=_random_soft_case,
        rtol=1e-5, atol=1e-7,
        hint="Divide the logits by the temperature, then softmax over the last axis "
             "(dim=-1, the vocabulary).",
        mistakes=[
            Mistake("times T", _soft_times_t,
                    "Divide by T: a higher temperature must FLATTEN the distribution "
                    "(logits / T shrinks the gaps between them)."),
            Mistake("no temperature", _soft_no_t,
                    "Use the temperature: softmax(logits / T), not softmax(logits)."),
            Mistake("softmax over dim 0", _soft_dim0,
                    "Normalise over the vocabulary, the LAST axis (dim=-1): each position's "
                    "probabilities must sum to 1."),
        ],
    ),
    Exercise(
        "kd_loss", LAB, kd_loss,
        fixed_cases=[_kd_case((3, 5), 2.0, 0), _kd_case((4, 16), 4.0, 1),
                     _kd_case((2, 3, 10), 1.0, 2), _kd_case((8, 50), 0.5, 3),
                     _kd_case((1, 7, 32), 8.0, 4)],
        random_case=_random_kd_case,
        rtol=1e-4, atol=1e-6,
        hint="p_t = softmax(teacher / T), log p_s = log_softmax(student / T); the KL is "
             "sum_v p_t (log p_t - log p_s) over the last axis; average it over positions "
             "and multiply by T**2.",
        mistakes=[
            Mistake("no T^2", _kd_no_t2,
                    "Multiply by T**2: the soft targets' gradients shrink as 1/T^2, and T^2 "
                    "restores their size (Hinton et al. 2015)."),
            Mistake("KL reversed", _kd_reverse,
                    "Distillation uses the forward KL(teacher || student) = sum p_t (log p_t - "
                    "log p_s): the teacher's probabilities weight the sum, not the student's."),
            Mistake("student without T", _kd_student_no_t,
                    "Soften the student too: log_softmax(student_logits / T). Both "
                    "distributions must be at the same temperature."),
            Mistake("kl_div mean", _kd_kl_div_mean,
                    "Sum the KL over the vocabulary and average over positions only: "
                    "F.kl_div(reduction='mean') also divides by the vocabulary size (use "
                    "'batchmean' on a (positions, V) view)."),
            Mistake("summed over positions", _kd_sum_positions,
                    "Average over positions (mean), do not sum them: the loss must not grow "
                    "with the batch size or sequence length."),
        ],
    ),
]
