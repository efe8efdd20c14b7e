"""ALPNet: adaptive local prototypes (SSL-ALPNet's head)."""

from __future__ import annotations

import torch

from ..prototypes import COSINE_SCALE, class_score, cosine_scores, local_prototypes, masked_average
from .base import Head, HeadOutput


def window_for(features: torch.Tensor, training: bool = False) -> int:
    """The pooling window of local prototypes: 2x2 at test time and 4x4 in training on 32x32 features
    (METHOD.md), the same share of the grid on others."""
    return max(1, features.shape[-1] // (8 if training else 16))


def alp_logits(
    query: torch.Tensor, background: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALP classification: ``[Q, 2, h, w]`` class scores, and the foreground attention ``[Q, h, w]``."""
    foreground_scores = cosine_scores(query, foreground)
    logits = torch.stack([class_score(cosine_scores(query, background)), class_score(foreground_scores)], dim=1)
    return logits, foreground_scores.amax(dim=1) / COSINE_SCALE


class ALPNetHead(Head):
    """Background: local prototypes; foreground: local ones plus the global prototype.

    When no window is foreground enough, the global foreground prototype stands
    alone; likewise the global background prototype when no window is background.
    """

    name = "alpnet"

    def prototypes(self, support: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(background ``[Kb, C]``, foreground ``[Kf, C]``) prototypes of the support."""
        window = window_for(support, self.training)
        background = local_prototypes(support, 1.0 - mask, window)
        if len(background) == 0:
            background = masked_average(support, 1.0 - mask)
        foreground = torch.cat([local_prototypes(support, mask, window), masked_average(support, mask)])
        return background, foreground

    def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
        background, foreground = self.prototypes(support, mask)
        return HeadOutput(*alp_logits(query, background, foreground))
