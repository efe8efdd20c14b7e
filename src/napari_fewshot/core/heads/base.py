"""The head interface: support features and mask in, query logits and attention out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class HeadOutput:
    """What a head predicts for a batch of query slices, at feature resolution.

    logits : ``[Q, 2, h, w]``, background then foreground.
    attention : ``[Q, h, w]``, cosine similarity in [-1, 1] of each query position
        to the foreground prototype(s): what the widget shows as the attention map.
    """

    logits: torch.Tensor
    attention: torch.Tensor


class Head(nn.Module):
    """``forward(support [S, C, h, w], mask [S, h, w] in [0, 1], query [Q, C, h, w]) -> HeadOutput``.

    One structure against the rest (1-way); the support slices' foreground is
    ``mask``.  Device-agnostic: every tensor follows the inputs' device.
    """

    name: str = ""

    def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
        raise NotImplementedError
