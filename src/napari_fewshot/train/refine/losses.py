"""PCCS's supervised loss, uncertainty and uncertainty-guided consistency (PCCS.md).

Probabilities and logits are ``[N, C, H, W]`` (class 0 the background); targets ``[N, H, W]`` class indices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The uncertainty threshold rises from this to ``THRESHOLD_END`` nats over training.
THRESHOLD_START, THRESHOLD_END = 0.25, 0.5
#: Weight of the entropy maps' agreement inside the consistency loss.
ENTROPY_PENALTY = 0.1


def soft_dice_loss(probability: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - the mean over foreground classes of 2|P∩G| / (|P| + |G|) (soft, per batch)."""
    classes = probability.shape[1]
    truth = F.one_hot(target, classes).permute(0, 3, 1, 2).to(probability.dtype)
    inter = (probability * truth).sum(dim=(0, 2, 3))[1:]
    total = (probability + truth).sum(dim=(0, 2, 3))[1:]
    return 1.0 - ((2.0 * inter + eps) / (total + eps)).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ cross-entropy + ½ soft Dice on labelled slices."""
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * soft_dice_loss(logits.softmax(dim=1), target)


def entropy(probability: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy in nats ``[N, H, W]`` of class probabilities ``[N, C, H, W]``."""
    return -(probability * torch.log(probability.clamp_min(1e-8))).sum(dim=1)


def uncertainty_threshold(step: int, steps: int) -> float:
    """Nats below which a pixel counts as certain, rising linearly over the run."""
    return THRESHOLD_START + (THRESHOLD_END - THRESHOLD_START) * min(step / max(steps, 1), 1.0)


def ramp_up(step: int, ramp_steps: int, weight: float) -> float:
    """``weight * exp(-5 (1 - t)^2)`` with ``t = step / ramp_steps`` capped at 1."""
    t = min(step / max(ramp_steps, 1), 1.0)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, teacher_entropy: torch.Tensor, threshold: float
) -> torch.Tensor:
    """MSE of student and teacher probabilities where the teacher is certain, plus the entropy maps' MSE.

    student, teacher : ``[N, C, H, W]`` probabilities (the teacher's carry no gradient);
    teacher_entropy : ``[N, H, W]`` nats.  Pixels with entropy at or above ``threshold``
    are left out of the first term; the second (weight :data:`ENTROPY_PENALTY`) asks
    the student to be as sure as the teacher everywhere.
    """
    certain = (teacher_entropy < threshold).to(student.dtype)
    squared = ((student - teacher) ** 2).mean(dim=1)
    agreement = (squared * certain).sum() / certain.sum().clamp_min(1.0)
    return agreement + ENTROPY_PENALTY * F.mse_loss(entropy(student), teacher_entropy)
