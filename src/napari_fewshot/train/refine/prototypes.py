"""Signed-distance iso-layer prototypes and their uncertainty-weighted contrastive loss (PCCS.md).

On an unlabelled slice, the pseudo-label of each foreground class is cut into
iso-distance layers from its boundary (layer 1) to its core; each layer's mean
embedding is one prototype of that class.  Background prototypes are the mean
embedding of the uncertain background near the objects (within half the largest
distance from them) and of the background far from them.  Each prototype carries
the mean uncertainty (entropy, nats) of its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: Temperature of the prototype contrastive loss.
TEMPERATURE = 0.05


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """``[H, W]`` float64: distance in pixels to the other side of ``mask``'s boundary, negative inside.

    A pixel inside touching the outside is -1, one outside touching the inside +1.
    An empty mask is +inf everywhere, a full one -inf.
    """
    mask = np.asarray(mask, bool)
    if not mask.any() or mask.all():
        return np.full(mask.shape, np.inf if not mask.any() else -np.inf)
    return np.where(mask, -ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask))


@dataclass
class Prototypes:
    """``vectors`` ``[P, D]`` (L2-normalised), their ``classes`` ``[P]`` and ``uncertainty`` ``[P]`` (nats)."""

    vectors: torch.Tensor
    classes: torch.Tensor
    uncertainty: torch.Tensor

    @classmethod
    def cat(cls, parts: list[Prototypes]) -> Prototypes:
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in ("vectors", "classes", "uncertainty")))


def slice_prototypes(
    embedding: torch.Tensor, pseudo: np.ndarray, uncertainty: torch.Tensor, classes: int, threshold: float
) -> Prototypes:
    """The prototypes of one slice.

    embedding : ``[D, h, w]``; pseudo : ``[h, w]`` class indices (argmax of a
    prediction); uncertainty : ``[h, w]`` nats; a background pixel near the objects
    counts when its uncertainty is at least ``threshold``.
    """
    regions: list[tuple[int, np.ndarray]] = []
    for value in range(1, classes):
        depth = -signed_distance(pseudo == value)  # inside: 1 at the boundary, growing to the core
        if np.isfinite(depth).all():
            regions += [(value, np.ceil(depth) == layer) for layer in range(1, int(np.ceil(depth.max())) + 1)]
    background = pseudo == 0
    if background.all():
        regions.append((0, background))
    elif background.any():
        away = signed_distance(~background)  # distance from the objects
        half = away[background].max() / 2
        uncertain = (uncertainty >= threshold).cpu().numpy()
        regions += [(0, background & (away <= half) & uncertain), (0, background & (away > half))]
    regions = [(value, region) for value, region in regions if region.any()]
    if not regions:
        return Prototypes(embedding.new_zeros((0, embedding.shape[0])), torch.zeros(0, dtype=torch.long, device=embedding.device),
                          uncertainty.new_zeros(0))
    masks = torch.as_tensor(np.stack([region for _, region in regions]), device=embedding.device, dtype=embedding.dtype)
    counts = masks.sum(dim=(1, 2))
    vectors = torch.einsum("phw,dhw->pd", masks, embedding) / counts[:, None]
    mean_uncertainty = torch.einsum("phw,hw->p", masks, uncertainty.to(embedding.dtype)) / counts
    labels = torch.tensor([value for value, _ in regions], dtype=torch.long, device=embedding.device)
    return Prototypes(F.normalize(vectors, dim=1), labels, mean_uncertainty.detach())


def prototype_contrastive_loss(prototypes: Prototypes, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The uncertainty-weighted prototype contrastive loss (a scalar, 0 when no prototype has a positive and a negative).

    For each prototype (the anchor), each other prototype of its class is a
    positive, weighted by a softmax of their similarities; every prototype of
    another class is a negative; the InfoNCE term of each positive is weighted so.
    Anchors are weighted by a softmax of their negated uncertainty (sure ones count
    more).  An anchor alone in its class has no positive and is left out.
    """
    vectors, classes = prototypes.vectors, prototypes.classes
    similarity = vectors @ vectors.T / temperature
    same = classes[:, None] == classes[None, :]
    positive = same & ~torch.eye(len(classes), dtype=torch.bool, device=vectors.device)
    negative = ~same
    anchors = positive.any(dim=1) & negative.any(dim=1)
    if not anchors.any():
        return vectors.sum() * 0.0
    similarity, positive, negative = similarity[anchors], positive[anchors], negative[anchors]
    negatives = torch.logsumexp(similarity.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)
    info_nce = torch.logaddexp(similarity, negatives) - similarity  # -log(e^s / (e^s + sum of negatives))
    weights = similarity.detach().masked_fill(~positive, float("-inf")).softmax(dim=1)
    per_anchor = (weights * info_nce.masked_fill(~positive, 0.0)).sum(dim=1)
    anchor_weights = (-prototypes.uncertainty[anchors]).softmax(dim=0)
    return (anchor_weights * per_anchor).sum()
