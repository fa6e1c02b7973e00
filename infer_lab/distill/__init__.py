"""Knowledge distillation: a small student learns from a large teacher.

    losses.py  kd_loss (Hinton et al. 2015), reverse_kl_loss (MiniLLM), hidden-state MSE
    loop.py    distill(): the zoo's training recipe with the loss swapped; teacher
               samples for sequence-level KD (Kim & Rush 2016)
"""

from .losses import (HiddenProjection, hidden_state_loss, kd_loss, match_layers,
                     reverse_kl_loss, soft_targets)
from .loop import (DISTILL_PRESETS, DistillConfig, DistillResult, distill, sequence_stream,
                   teacher_samples)

__all__ = ["kd_loss", "reverse_kl_loss", "soft_targets", "HiddenProjection",
           "hidden_state_loss", "match_layers", "DistillConfig", "DISTILL_PRESETS",
           "DistillResult", "distill", "teacher_samples", "sequence_stream"]
