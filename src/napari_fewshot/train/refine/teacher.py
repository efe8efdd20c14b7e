"""The mean teacher: a copy of the student whose weights follow the student's by exponential moving average."""

from __future__ import annotations

import copy

import torch
from torch import nn

#: The teacher keeps this share of its weights each step (PCCS.md: 0.99).
DECAY = 0.99


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that takes no gradients."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, decay: float = DECAY) -> None:
    """``teacher = a * teacher + (1 - a) * student`` per parameter, ``a = min(1 - 1 / (step + 1), decay)``.

    The ramp lets the teacher follow closely while the student changes most (the
    first steps); batch-norm statistics are copied from the student.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for mine, theirs in zip(teacher.parameters(), student.parameters()):
        mine.mul_(alpha).add_(theirs.detach(), alpha=1.0 - alpha)
    for mine, theirs in zip(teacher.buffers(), student.buffers()):
        mine.copy_(theirs)
