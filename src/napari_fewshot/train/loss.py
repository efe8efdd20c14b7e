"""The training objective: weighted cross-entropy on the query plus prototype alignment (METHOD.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.model import FewShotModel

#: Cross-entropy class weights (background, foreground).
CLASS_WEIGHTS = (0.05, 1.0)
#: Weight of the prototype alignment loss against the query loss.
ALIGNMENT_WEIGHT = 1.0


def head_mask(mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """A mask ``[N, S, S]`` resized bilinearly (soft) to the grid of ``features`` ``[N, C, h, w]``."""
    return F.interpolate(mask[:, None], size=features.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def weighted_cross_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of head logits ``[N, 2, h, w]``, upsampled bilinearly, against ``mask`` ``[N, S, S]``."""
    upsampled = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(upsampled, (mask > 0.5).long(), weight=logits.new_tensor(CLASS_WEIGHTS))


class EpisodeLoss(nn.Module):
    """``forward(support, support_mask, query, query_mask) -> (loss, query_loss, alignment_loss)``.

    The query loss scores the query's prediction from the support.  The alignment
    loss turns the episode around: the query's predicted mask (hard, no gradient
    through it) makes prototypes from the query's features that must segment the
    support.  A query past the segment's end (an empty mask) has nothing to align,
    so its alignment loss is zero.  One module, so that DistributedDataParallel
    sees one forward per step.
    """

    def __init__(self, model: FewShotModel, from_trunk: bool) -> None:
        super().__init__()
        self.model, self.from_trunk = model, from_trunk

    def forward(
        self, support: torch.Tensor, support_mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        support_features = self.model.features(support, self.from_trunk)
        query_features = self.model.features(query, self.from_trunk)
        predicted = self.model.head(support_features, head_mask(support_mask, support_features), query_features)
        query_loss = weighted_cross_entropy(predicted.logits, query_mask)
        if not bool(query_mask.any()):
            return query_loss, query_loss.detach(), query_loss.new_zeros(())
        query_guess = (predicted.logits.argmax(dim=1) == 1).float()
        aligned = self.model.head(query_features, query_guess, support_features)
        alignment_loss = weighted_cross_entropy(aligned.logits, support_mask)
        return query_loss + ALIGNMENT_WEIGHT * alignment_loss, query_loss.detach(), alignment_loss.detach()
