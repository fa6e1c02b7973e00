"""Exercises of lab 04 (distillation).

* soft_targets: the teacher's distribution at temperature T (Hinton et al. 2015),
  ``p_i = exp(z_i / T) / sum_j exp(z_j / T)`` over the vocabulary (the last axis).
  T > 1 flattens it and shows the "dark knowledge" in the small probabilities.
* kd_loss: the temperature-scaled distillation loss
  ``T^2 * KL(p_teacher^T || p_student^T)``, the KL summed over the vocabulary and
  averaged over positions. The ``T^2`` keeps the gradient's size independent of T:
  the gradient of the soft loss with respect to a student logit scales as ``1 / T^2``.
* distill_step (technique, :mod:`.distillation_step`): one training step with that loss.

Both softmaxes must be stable: cases with logits in the hundreds overflow a plain
``exp`` (inf / inf = nan) or underflow a probability to 0 before its log (-inf), so a
naive answer fails with its own hint. The learner's kd_loss then trains the lab's student
(``distill(..., soft_loss=)``).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from . import catalog
from .checker import Case, Exercise, Mistake, compare
from .distillation_step import STEP_EXERCISES
from .predictions import Prediction

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


class StableExercise(Exercise):
    """An exercise with overflowing cases: a wrong answer that is non-finite exactly where a
    registered unstable mistake is matches it (NaN equals nothing, so compare cannot)."""

    def diagnose(self, case: Case, got) -> str | None:
        if not (isinstance(got, torch.Tensor) and torch.is_floating_point(got)
                and not torch.isfinite(got).all()):
            return super().diagnose(case, got)
        for m in self.mistakes:
            try:
                want = self._call(m.fn, case)
            except Exception:  # noqa: BLE001, S112  a mistake that cannot run is no match
                continue
            if (isinstance(want, torch.Tensor) and want.shape == got.shape
                    and torch.equal(torch.isfinite(want), torch.isfinite(got))
                    and compare(got.nan_to_num(), want.nan_to_num(), self.rtol, self.atol,
                                self.exact_dtype) is None):
                return m.hint
        return None


# -- wrong answers a learner might write ----------------------------------------------------
def _soft_naive(logits, temperature):
    e = torch.exp(logits / temperature)  # overflows to inf for logits / T above ~88
    return e / e.sum(-1, keepdim=True)


def _kd_log_of_softmax(s, t, T):
    p_t = torch.softmax(t / T, dim=-1)
    log_p_s = torch.log(torch.softmax(s / T, dim=-1))  # log(0) = -inf once p_s underflows
    return T * T * (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()


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


def _large_soft_case(seed: int, shape: tuple[int, ...], T: float) -> Case:
    # Logits in the hundreds: exp(z / T) overflows fp32 (max ~ exp(88.7)).
    return Case((_randn(seed, *shape) * 150 + 120, T))


def _large_kd_case(seed: int, shape: tuple[int, ...], T: float) -> Case:
    # A confident teacher and a student far from it: p_s underflows to 0 where p_t is not.
    return Case((_randn(seed, *shape) * 60, _randn(seed + 1000, *shape) * 200, T))


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
    StableExercise(
        "soft_targets", LAB, soft_targets,
        fixed_cases=[Case((torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 5.0]]), 2.0)),
                     Case((_randn(0, 4, 10) * 3, 4.0)), Case((_randn(1, 3, 8), 0.5)),
                     Case((_randn(2, 2, 5, 16) * 2, 1.0)), Case((_randn(3, 6, 100) * 4, 10.0)),
                     Case((torch.tensor([[1000.0, 999.0, 990.0], [-1000.0, -1001.0, -1100.0]]),
                           1.0)),
                     _large_soft_case(4, (4, 50), 1.0), _large_soft_case(5, (2, 3, 30), 2.0)],
        random_case=_random_soft_case,
        rtol=1e-5, atol=1e-7,
        hint="Soften the logits by the temperature (a higher T must flatten the "
             "distribution), then normalise them into probabilities over the vocabulary, the "
             "last axis, so that each position sums to 1. Logits can be in the hundreds.",
        code_hint="return torch.softmax(logits / temperature, dim=-1); by hand: "
                  "z = logits / temperature; z = z - z.amax(-1, keepdim=True); "
                  "e = z.exp(); e / e.sum(-1, keepdim=True)",
        mistakes=[
            Mistake("times T", _soft_times_t,
                    "Divide by T: a higher temperature must FLATTEN the distribution "
                    "(logits / T shrinks the gaps between them)."),
            Mistake("no temperature", _soft_no_t,
                    "Use the temperature: softmax(logits / T), not softmax(logits)."),
            Mistake("softmax over dim 0", _soft_dim0,
                    "Normalise over the vocabulary, the LAST axis: each position's "
                    "probabilities must sum to 1."),
            Mistake("unstable exp", _soft_naive,
                    "exp of a logit in the hundreds overflows to inf, and inf / inf is NaN. "
                    "Softmax is unchanged by subtracting a constant from every logit: "
                    "subtract each position's largest logit before the exp (or use the "
                    "library's softmax, which does)."),
        ],
    ),
    StableExercise(
        "kd_loss", LAB, kd_loss,
        fixed_cases=[_kd_case((3, 5), 2.0, 0), _kd_case((4, 16), 4.0, 1),
                     _kd_case((2, 3, 10), 1.0, 2), _kd_case((8, 50), 0.5, 3),
                     _kd_case((1, 7, 32), 8.0, 4), _large_kd_case(5, (4, 40), 1.0),
                     _large_kd_case(6, (2, 3, 25), 2.0)],
        random_case=_random_kd_case,
        rtol=1e-4, atol=1e-6,
        hint="Soften both distributions at the same temperature. The KL sums, over the "
             "vocabulary, the teacher's probability times the gap between the teacher's and "
             "the student's log-probabilities; average that over positions and multiply by "
             "the temperature squared. Take log-probabilities directly from the logits: "
             "logits can be in the hundreds.",
        code_hint="log_p_t = F.log_softmax(teacher_logits / T, -1); log_p_s = "
                  "F.log_softmax(student_logits / T, -1); "
                  "return T * T * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()",
        mistakes=[
            Mistake("no T^2", _kd_no_t2,
                    "Multiply by T**2: the soft targets' gradients shrink as 1/T^2, and T^2 "
                    "restores their size (Hinton et al. 2015)."),
            Mistake("KL reversed", _kd_reverse,
                    "Distillation uses the forward KL(teacher || student) = sum p_t (log p_t - "
                    "log p_s): the teacher's probabilities weight the sum, not the student's."),
            Mistake("student without T", _kd_student_no_t,
                    "Soften the student too: both distributions must be at the same "
                    "temperature."),
            Mistake("kl_div mean", _kd_kl_div_mean,
                    "Sum the KL over the vocabulary and average over positions only: "
                    "kl_div's reduction 'mean' also divides by the vocabulary size ('batchmean' "
                    "on a (positions, V) view does not)."),
            Mistake("summed over positions", _kd_sum_positions,
                    "Average over positions (mean), do not sum them: the loss must not grow "
                    "with the batch size or sequence length."),
            Mistake("log of softmax", _kd_log_of_softmax,
                    "A student probability that underflows to 0 has log -inf, and the loss "
                    "becomes inf or NaN. Compute log-probabilities directly from the logits "
                    "(log-softmax: z - max - log sum exp(z - max)), never as the log of a "
                    "softmax."),
        ],
    ),
    *STEP_EXERCISES,
]

PREDICTIONS = [
    Prediction(
        "distill_kd_heldout_loss", LAB,
        "The held-out loss of the forward-KD student after its training run, in nats per "
        "token (it starts at the random student's loss printed above; the teacher's is "
        "printed too; passing is within 0.3 nats)",
        "nats/token", abs_tol=0.3,
        explain="A run of a few seconds moves a random student only part of the way from "
                "ln(4096) = 8.3 nats (uniform) toward the teacher; the larger scales train "
                "longer and get closer. The teacher's loss is a floor the student cannot "
                "beat on average without more capacity."),
    Prediction(
        "distill_student_speedup", LAB,
        "Decode tokens/s of the distilled student (code-s's shape, about a quarter of code-m's "
        "parameters) as a multiple of the teacher code-m's, at batch 1 (passing is within 35% "
        "of the measured ratio)",
        "x teacher", rel_tol=0.35,
        explain="At batch 1 each decode step reads every weight once, so time follows the "
                "bytes read: code-s holds 1.67 M parameters to code-m's 6.95 M (4.2x fewer), "
                "and has 2 layers to 8, so it is several times faster; less than 4.2x "
                "because the 4096-word embedding and output projection, and the per-step "
                "overhead, shrink less than the rest."),
]
