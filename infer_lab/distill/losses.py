"""Distillation losses: how a student learns from a teacher's outputs or hidden states.

* Soft targets (Hinton, Vinyals & Dean 2015): the teacher's distribution at temperature
  T, ``p_i = exp(z_i / T) / sum_j exp(z_j / T)``. T > 1 flattens it and exposes the
  "dark knowledge" in the small probabilities (which wrong tokens are nearly right).
* Forward KD: ``L_KD = T^2 * KL(p_t^T || p_s^T)``, averaged over token positions. The
  ``T^2`` keeps the gradient's size independent of T (the soft gradient scales as 1/T^2).
  Forward KL is *mean-seeking*: the student spreads mass over everything the teacher
  finds plausible.
* Reverse KD (MiniLLM, Gu et al. 2023): ``KL(p_s || p_t)``, *mode-seeking*: the student
  may ignore low-probability regions of the teacher but is punished for putting mass
  where the teacher puts none. MiniLLM optimises it with policy gradients on the
  student's own samples; here it is the token-level version on training text.
* Hidden-state distillation (FitNets, Romero et al. 2015; TinyBERT, Jiao et al. 2020):
  ``MSE(h_s W, h_t)``, a learned projection W bridging a narrower student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
           temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student and teacher vocabularies differ ({student_logits.shape[-1]} "
                         f"vs {teacher_logits.shape[-1]} logits): logit distillation needs a "
                         "shared tokenizer")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"logit shapes differ: student {tuple(student_logits.shape)}, "
                         f"teacher {tuple(teacher_logits.shape)}")


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the last axis (the vocabulary). (..., V) -> (..., V)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 2.0) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), KL summed over V, mean over positions.

    Logits are (..., V); log_softmax rather than log(softmax) so tiny probabilities stay
    finite. Computed in fp32 whatever the logits' dtype.
    """
    _check(student_logits, teacher_logits, temperature)
    T = temperature
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)  # (..., V)
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)  # (..., V)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...,) one KL per position
    return T * T * kl.mean()


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(s/T) || softmax(t/T)): the student's probabilities weight the sum."""
    _check(student_logits, teacher_logits, temperature)
    T = temperature
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)  # (..., V)
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)  # (..., V)
    kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)  # (...,)
    return T * T * kl.mean()


class HiddenProjection(nn.Module):
    """Learned linear map from the student's width to the teacher's: h_s (.., d_s) -> (.., d_t).

    TinyBERT's W_h. Initialised to the identity on the shared dimensions, so a student
    as wide as its teacher starts by comparing states as they are.
    """

    def __init__(self, d_student: int, d_teacher: int):
        super().__init__()
        self.proj = nn.Linear(d_student, d_teacher, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            n = min(d_student, d_teacher)
            self.proj.weight[:n, :n] = torch.eye(n)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


def match_layers(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs: the uniform map of TinyBERT / PKD-skip.

    Student block i is matched to teacher block round((i + 1) * L_t / L_s) - 1, so the
    last blocks always meet and the others spread evenly through the teacher's depth.
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError("both models need at least one layer")
    return [(i, max(0, round((i + 1) * n_teacher / n_student) - 1)) for i in range(n_student)]


def hidden_state_loss(student_hidden: torch.Tensor | list[torch.Tensor],
                      teacher_hidden: torch.Tensor | list[torch.Tensor],
                      proj: nn.Module) -> torch.Tensor:
    """MSE(proj(h_s), h_t), averaged over the matched layers.

    Pass one tensor each (B, T, d) or lists of matched block outputs, student block i
    against teacher block :func:`match_layers`\\ (L_s, L_t)[i][1] (the uniform map);
    one projection is shared by all pairs, as in TinyBERT. Teacher states are targets
    (detached).
    """
    hs = student_hidden if isinstance(student_hidden, (list, tuple)) else [student_hidden]
    ht = teacher_hidden if isinstance(teacher_hidden, (list, tuple)) else [teacher_hidden]
    if len(hs) != len(ht) or not hs:
        raise ValueError(f"need matched pairs of hidden states, got {len(hs)} student and "
                         f"{len(ht)} teacher tensors")
    losses = []
    for s, t in zip(hs, ht):
        p = proj(s.float())  # (B, T, d_t)
        if p.shape != t.shape:
            raise ValueError(f"projected student state {tuple(p.shape)} does not match the "
                             f"teacher's {tuple(t.shape)}")
        losses.append(F.mse_loss(p, t.detach().float()))
    return torch.stack(losses).mean()
