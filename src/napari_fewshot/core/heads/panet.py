"""PANet: one mean prototype per class, cosine matching."""

from __future__ import annotations

import torch

from ..prototypes import COSINE_SCALE, cosine_scores, masked_average
from .base import Head, HeadOutput


class PANetHead(Head):
    """Foreground and background prototypes by masked average pooling; logits are ``20 cos``."""

    name = "panet"

    def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
        prototypes = torch.cat([masked_average(support, 1.0 - mask), masked_average(support, mask)])
        logits = cosine_scores(query, prototypes)
        return HeadOutput(logits, logits[:, 1] / COSINE_SCALE)
