"""DSPNet: detail self-refined prototypes on top of ALP classification.

Three additions to ALPNet (METHOD.md, "DSPNet additions"), as the released code
behaves:

1. :func:`refine_support`: the support features attend to the query slice.
2. :func:`fspa_prototype`: foreground semantic prototype attention replaces the
   global foreground prototype.
3. :class:`BCMA`: background channel-structural attention mixes neighbouring
   channels of the local prototype candidates.

Refinement makes the prototypes differ per query slice, so they are ``[Q, K, C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.base import FEATURE_CHANNELS
from ..prototypes import EPSILON, LOCAL_THRESHOLD, window_candidates, window_fractions
from .alpnet import alp_logits, window_for
from .base import Head, HeadOutput

#: Side of the reference feature grid; FSPA's areas and coordinates are in its units.
REFERENCE_GRID = 32
#: One FSPA seed per this many foreground positions of the reference grid ...
SEED_AREA = 100.0
#: ... and at most this many.
MAX_SEEDS = 5
CLUSTER_ITERATIONS = 10
#: Squared feature and coordinate distances are divided by this in the clustering.
CLUSTER_SCALE = 100.0
#: Released BCMA defaults: alpha and the initial tridiagonal (w1, w2, w3) of Lambda.
BCMA_ALPHA = 0.2
BCMA_WEIGHTS = (0.3, 0.8, 0.3)


def refine_support(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Query-guided refinement ``S~_i = S_i + sum_j A_ij S_j``, ``A = softmax_j cos(S_i, Q_j)``.

    ``support`` ``[S, C, h, w]`` and ``query`` ``[Q, C, h, w]`` share one grid; ``i``
    runs over a support slice's positions and ``j`` over the query's.  As in the
    released code the attended values are the support's own features at ``j``.
    Returns ``[Q, S, C, h, w]``: one refined support per query slice.
    """
    n_support, channels, height, width = support.shape
    flat_support, flat_query = support.flatten(2), query.flatten(2)
    cosine = torch.einsum("sci,qcj->qsij", F.normalize(flat_support, dim=1), F.normalize(flat_query, dim=1))
    attended = torch.einsum("qsij,scj->qsci", cosine.softmax(dim=-1), flat_support)
    refined = flat_support[None] + attended
    return refined.reshape(len(query), n_support, channels, height, width)


def seed_count(mask: torch.Tensor) -> int:
    """FSPA's number of seeds, ``min(round(area / 100), 5)``, area on the 32x32 grid.

    ``mask`` ``[S, h, w]`` in [0, 1]; positions above 0.5 count, scaled from ``h x w``
    to the reference grid so the count depends on the structure, not the encoder.
    """
    height, width = mask.shape[-2:]
    area = float((mask > 0.5).sum()) * REFERENCE_GRID**2 / (height * width)
    return min(round(area / SEED_AREA), MAX_SEEDS)


def place_seeds(inside: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` seeds placed one by one at the maximum of the distance transform.

    ``inside`` ``[S, h, w]`` bool.  Each seed is the inside position farthest (in
    plane, on its own slice) from everything outside the mask, the area beyond the
    slice's edge, and the seeds placed before it.  Returns indices into
    ``inside.nonzero()``, ``[count]`` long.
    """
    padded = F.pad(inside, (1, 1, 1, 1))
    # Slices are kept apart by an offset far larger than any in-plane distance.
    apart = torch.tensor([4.0 * sum(inside.shape), 1.0, 1.0], device=inside.device)
    positions = padded.nonzero().float() * apart
    blockers = (~padded).nonzero().float() * apart
    nearest = torch.cdist(positions, blockers).amin(dim=1)
    seeds = []
    for _ in range(count):
        seed = int(nearest.argmax())
        seeds.append(seed)
        nearest = torch.minimum(nearest, (positions - positions[seed]).norm(dim=1))
    return torch.tensor(seeds, dtype=torch.long, device=inside.device)


def soft_clusters(features: torch.Tensor, coords: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Soft clustering of masked positions from the seeds: centres ``[Q, K, C]``.

    ``features`` ``[Q, M, C]`` and ``coords`` ``[M, 2]`` (reference-grid units) of
    the ``M`` foreground positions; ``seeds`` ``[K]`` indexes them.  Each of the 10
    iterations weighs position ``m`` for centre ``k`` by ``exp(-d)`` normalised over
    positions, ``d = sqrt(|f - c|^2 / 100 + |xy - c_xy|^2 / 100)``, and moves the
    centre to the weighted mean of features and coordinates.
    """
    centres = features[:, seeds]
    centre_coords = coords[seeds].expand(len(features), -1, -1)
    for _ in range(CLUSTER_ITERATIONS):
        coords_per_query = coords.expand(len(features), -1, -1)
        squared = torch.cdist(features, centres) ** 2 + torch.cdist(coords_per_query, centre_coords) ** 2
        weights = (-(squared / CLUSTER_SCALE).sqrt()).softmax(dim=1)
        centres = torch.einsum("qmk,qmc->qkc", weights, features)
        centre_coords = torch.einsum("qmk,mx->qkx", weights, coords)
    return centres


def positions_last(refined: torch.Tensor) -> torch.Tensor:
    """``[Q, S, C, h, w]`` as ``[Q, S * h * w, C]``: every support position's features."""
    return refined.permute(0, 1, 3, 4, 2).reshape(len(refined), -1, refined.shape[2])


def weighted_average(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked average pooling per query, ``sum f*m / (sum m + 1e-5)``: ``[Q, S*h*w, C]``, ``[S, h, w]`` -> ``[Q, C]``."""
    weights = mask.reshape(-1)
    return torch.einsum("qpc,p->qc", flat, weights) / (weights.sum() + EPSILON)


def fspa_prototype(refined: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Foreground semantic prototype attention: one foreground prototype per query, ``[Q, C]``.

    ``refined`` ``[Q, S, C, h, w]`` (from :func:`refine_support`), ``mask`` ``[S, h, w]``
    in [0, 1].  Cluster centres found from the seeds each attend over all support
    positions (``softmax_p(S~_p . c_k)``); the attended centres are added to the
    features and the prototype is their masked average.  With fewer than two seeds
    it is the masked average of ``refined`` itself.
    """
    height, width = refined.shape[-2:]
    flat = positions_last(refined)
    count = seed_count(mask)
    if count >= 2:
        inside = mask > 0.5
        scale = torch.tensor([REFERENCE_GRID / height, REFERENCE_GRID / width], device=mask.device)
        coords = inside.nonzero()[:, 1:].float() * scale
        centres = soft_clusters(flat[:, inside.reshape(-1)], coords, place_seeds(inside, count))
        attention = torch.einsum("qpc,qkc->qkp", flat, centres).softmax(dim=-1)
        flat = flat + torch.einsum("qkp,qkc->qpc", attention, centres)
    return weighted_average(flat, mask)


def tridiagonal(size: int, below: float, diagonal: float, above: float) -> torch.Tensor:
    """A ``[size, size]`` matrix with ``below``, ``diagonal``, ``above`` on its three central bands."""
    return (
        torch.diag(torch.full((size,), diagonal))
        + torch.diag(torch.full((size - 1,), below), -1)
        + torch.diag(torch.full((size - 1,), above), 1)
    )


class BCMA(nn.Module):
    """Background channel-structural attention on prototype candidates ``P`` ``[..., C, N]``.

    ``G = P P^T``; ``A = 1 + alpha (M * softmax_rows(G))`` with ``M`` the tridiagonal
    band (each channel and its two neighbours); ``P' = (A * Lambda) P`` with
    ``Lambda`` learnable, initialised tridiagonal ``weights`` (trained at a reduced
    learning rate).
    """

    def __init__(
        self,
        channels: int = FEATURE_CHANNELS,
        alpha: float = BCMA_ALPHA,
        weights: tuple[float, float, float] = BCMA_WEIGHTS,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.mixing = nn.Parameter(tridiagonal(channels, *weights))
        self.register_buffer("band", tridiagonal(channels, 1.0, 1.0, 1.0), persistent=False)

    def forward(self, candidates: torch.Tensor) -> torch.Tensor:
        gram = candidates @ candidates.transpose(-1, -2)
        attention = 1.0 + self.alpha * self.band * gram.softmax(dim=-1)
        return (attention * self.mixing) @ candidates


class DSPNetHead(Head):
    """ALP classification with query-refined support, FSPA and BCMA (the default head).

    Background: BCMA-mixed local prototypes of the refined support (its global
    prototype when no window is background).  Foreground: BCMA-mixed local
    prototypes plus the FSPA prototype.
    """

    name = "dspnet"

    def __init__(self, channels: int = FEATURE_CHANNELS) -> None:
        super().__init__()
        self.bcma = BCMA(channels)

    def prototypes(
        self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(background ``[Q, Kb, C]``, foreground ``[Q, Kf, C]``) prototypes for each query slice."""
        refined = refine_support(support, query)
        n_query, n_support, channels, height, width = refined.shape
        window = window_for(support, self.training)
        candidates = window_candidates(refined.reshape(-1, channels, height, width), window)
        candidates = candidates.reshape(n_query, n_support, channels, -1).transpose(1, 2).flatten(2)
        mixed = self.bcma(candidates).transpose(1, 2)  # [Q, S * windows, C]
        background = mixed[:, window_fractions(1.0 - mask, window).reshape(-1) > LOCAL_THRESHOLD]
        if background.shape[1] == 0:
            background = weighted_average(positions_last(refined), 1.0 - mask)[:, None]
        local_foreground = mixed[:, window_fractions(mask, window).reshape(-1) > LOCAL_THRESHOLD]
        return background, torch.cat([local_foreground, fspa_prototype(refined, mask)[:, None]], dim=1)

    def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
        background, foreground = self.prototypes(support, mask, query)
        return HeadOutput(*alp_logits(query, background, foreground))
