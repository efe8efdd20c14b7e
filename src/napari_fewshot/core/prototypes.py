"""Prototype arithmetic shared by the heads (PANet, ALPNet, DSPNet).

Shapes: features ``[N, C, h, w]``; masks ``[N, h, w]`` with values in [0, 1]
(soft: bilinearly resized); prototypes ``[K, C]``, or ``[N, K, C]`` where each
query slice has prototypes of its own (DSPNet refines the support per query).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Scale of cosine similarities before the softmax over prototypes (ALPNet's 20).
COSINE_SCALE = 20.0
#: A pooled window becomes a local prototype when this much of it is one class.
LOCAL_THRESHOLD = 0.95
EPSILON = 1e-5


def masked_average(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling over all slices: ``sum f*m / (sum m + 1e-5)`` -> ``[1, C]``."""
    weights = masks[:, None]
    return (features * weights).sum(dim=(0, 2, 3))[None] / (weights.sum() + EPSILON)


def window_candidates(features: torch.Tensor, window: int) -> torch.Tensor:
    """Every average-pooled window (``window`` x ``window``, same stride): ``[N, C, h', w']``."""
    return F.avg_pool2d(features, window, stride=window)


def window_fractions(masks: torch.Tensor, window: int) -> torch.Tensor:
    """The fraction of each window that ``masks`` covers: ``[N, h', w']``."""
    return F.avg_pool2d(masks[:, None], window, stride=window)[:, 0]


def local_prototypes(features: torch.Tensor, masks: torch.Tensor, window: int) -> torch.Tensor:
    """Average-pooled windows (``window`` x ``window``, same stride) that are > 95% mask: ``[K, C]``."""
    selected = window_fractions(masks, window) > LOCAL_THRESHOLD
    return window_candidates(features, window).permute(0, 2, 3, 1)[selected]


def cosine_scores(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``COSINE_SCALE * cos(q(x), p_k)`` for every query position: ``[N, K, h, w]``.

    ``prototypes`` is ``[K, C]`` (shared by all query slices) or ``[N, K, C]``.
    """
    q = F.normalize(query, dim=1)
    p = F.normalize(prototypes, dim=-1)
    equation = "nchw,kc->nkhw" if p.ndim == 2 else "nchw,nkc->nkhw"
    return COSINE_SCALE * torch.einsum(equation, q, p)


def class_score(scores: torch.Tensor) -> torch.Tensor:
    """ALP's class score ``sum_k softmax_k(d_k) * d_k`` from one class's :func:`cosine_scores`: ``[N, h, w]``."""
    return (scores.softmax(dim=1) * scores).sum(dim=1)
