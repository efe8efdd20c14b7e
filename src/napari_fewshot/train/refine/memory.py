"""Prototype updating prototype: the teacher's class prototypes, kept across steps (PCCS.md).

Each class has ``K`` prototypes.  Each step, the pixels where teacher and student
agree on the class are assigned to their class's ``K`` prototypes by a few
Sinkhorn iterations on the teacher's embeddings (balanced: each prototype takes
a share); each prototype moves by momentum toward the mean teacher embedding of
its pixels, then toward the student's condensed prototype (the mean student
embedding of the same pixels).  The auxiliary loss trains the student's
embedding to classify its pixels into the teacher's assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Prototypes per class.
PER_CLASS = 2
#: Momentum of the update toward the teacher's mean embedding, then toward the student's.
TEACHER_MOMENTUM, STUDENT_MOMENTUM = 0.999, 0.999
#: Temperature of the prototype classifier; Sinkhorn's entropy and iterations.
TEMPERATURE, SINKHORN_EPSILON, SINKHORN_ITERATIONS = 0.1, 0.05, 3


def sinkhorn(scores: torch.Tensor, epsilon: float = SINKHORN_EPSILON, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Balanced soft assignment ``[M, K]`` of ``M`` items to ``K`` prototypes from similarities ``scores`` ``[M, K]``.

    Each row sums to 1 (an item's assignment); each column sums to ``M / K`` (every
    prototype takes an equal share).
    """
    q = torch.exp((scores - scores.max()) / epsilon).T  # [K, M]
    q = q / q.sum()
    k, m = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / m
    return (q * m).T


class PrototypeMemory:
    """``prototypes`` ``[C, K, D]``, L2-normalised; moved each step by :meth:`update`, never by gradients."""

    def __init__(self, classes: int, dim: int, generator: torch.Generator, per_class: int = PER_CLASS) -> None:
        self.prototypes = F.normalize(torch.randn(classes, per_class, dim, generator=generator), dim=-1)

    def to(self, device: torch.device) -> PrototypeMemory:
        self.prototypes = self.prototypes.to(device)
        return self

    def update(self, teacher: torch.Tensor, student: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Move the prototypes toward the pixels ``teacher``, ``student`` ``[M, D]`` of ``classes`` ``[M]``.

        Returns each pixel's target ``[M]``: ``class * K + k``, its class's prototype
        ``k`` by the Sinkhorn assignment (before the move).
        """
        per_class = self.prototypes.shape[1]
        targets = torch.empty_like(classes)
        teacher, student = teacher.detach(), student.detach()
        for value in classes.unique().tolist():
            rows = classes == value
            assignment = sinkhorn(teacher[rows] @ self.prototypes[value].T).argmax(dim=1)
            targets[rows] = value * per_class + assignment
            for k in assignment.unique().tolist():
                mine = rows.nonzero().squeeze(1)[assignment == k]
                moved = TEACHER_MOMENTUM * self.prototypes[value, k] + (1 - TEACHER_MOMENTUM) * teacher[mine].mean(0)
                condensed = F.normalize(student[mine].mean(0), dim=0)
                moved = STUDENT_MOMENTUM * F.normalize(moved, dim=0) + (1 - STUDENT_MOMENTUM) * condensed
                self.prototypes[value, k] = F.normalize(moved, dim=0)
        return targets

    def auxiliary_loss(self, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the student's embeddings ``[M, D]`` against the prototypes' targets ``[M]``."""
        logits = student @ self.prototypes.reshape(-1, self.prototypes.shape[-1]).T / TEMPERATURE
        return F.cross_entropy(logits, targets)
