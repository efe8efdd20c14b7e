"""Self-supervised episodes: find one superpixel of a slice in an augmented copy of that slice.

An episode takes a slice and one of its pseudo-label segments as foreground
(everything else is background) and augments the slice twice, independently:
one copy is the support, the other the query.  With supervoxels the query is a
nearby slice that the same supervoxel crosses or, in a share of the episodes
(``absent_share``), a slice just past the supervoxel's end, where the query's
mask is empty: the head learns where a structure stops as well as where it is.
Draws that cannot make a usable episode are redrawn, and counted by reason in
:attr:`EpisodeSampler.skipped`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentRanges, random_gamma, random_warp, warp
from .data import TrainingVolume

#: Why a draw was skipped (the keys of :attr:`EpisodeSampler.skipped`).
SKIP_REASONS = ("one_segment", "too_small", "not_in_neighbour", "lost_in_query", "no_end_near")
#: A support segment must cover at least this many positions of the head's grid after augmentation.
MIN_HEAD_AREA = 1.0
#: With supervoxels, the query slice is at most this many slices from the support slice by default.
NEIGHBOUR_SLICES = 2
#: Give up (an error) after this many skipped draws in a row: the data cannot make episodes.
MAX_DRAWS = 1000


@dataclass
class Episode:
    """One training episode, batch size one.

    support, query : ``[1, 3, S, S]`` slices in [0, 1], or ``[1, C, h, w]`` trunk features.
    support_mask, query_mask : ``[1, S, S]`` float, 1 on the chosen segment, on the slices' grid.
    """

    support: torch.Tensor
    support_mask: torch.Tensor
    query: torch.Tensor
    query_mask: torch.Tensor


class EpisodeSampler:
    """Draws :class:`Episode` s from prepared volumes with a caller-given random generator.

    from_trunk : episodes carry cached trunk features (frozen encoder), warped on
        their own grid; otherwise slices, warped and gamma-adjusted.
    head_grid : the side of the head's feature grid, where a segment must stay visible.
    reach : with supervoxels, the query is at most this many slices from the support.
    absent_share : with supervoxels, the share of episodes whose query is a slice
        within ``reach`` slices past the supervoxel's end (an empty query mask).
    """

    def __init__(self, volumes: list[TrainingVolume], *, from_trunk: bool, head_grid: int,
                 ranges: AugmentRanges = AugmentRanges(), reach: int = NEIGHBOUR_SLICES,
                 absent_share: float = 0.0) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes, self.from_trunk, self.head_grid, self.ranges = volumes, from_trunk, head_grid, ranges
        self.reach, self.absent_share = reach, absent_share
        sizes = np.array([len(v.labels) for v in volumes], dtype=float)
        self.volume_weights = sizes / sizes.sum()
        self.skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})

    def draw(self, rng: np.random.Generator) -> Episode:
        """The next usable episode; unusable draws are counted in :attr:`skipped` and redrawn."""
        for _ in range(MAX_DRAWS):
            episode = self._try(rng)
            if isinstance(episode, Episode):
                return episode
            self.skipped[episode] += 1
        raise ValueError(f"{MAX_DRAWS} draws in a row made no usable episode (skipped: {dict(self.skipped)}); "
                         "the training images hold too little body or too few superpixels")

    def _try(self, rng: np.random.Generator) -> Episode | str:
        volume = self.volumes[rng.choice(len(self.volumes), p=self.volume_weights)]
        z = int(rng.integers(len(volume.labels)))
        segments = torch.unique(volume.labels[z])
        segments = segments[segments > 0]
        if len(segments) < 2:
            return "one_segment"
        segment = int(segments[rng.integers(len(segments))])
        query_z, absent = z, False
        if volume.supervoxels:
            absent = self.absent_share > 0 and rng.random() < self.absent_share
            window = range(max(0, z - self.reach), min(len(volume.labels), z + self.reach + 1))
            if absent:  # past the supervoxel's first or last slice, not in a gap inside it
                first, last = np.flatnonzero((volume.labels == segment).flatten(1).any(dim=1).numpy())[[0, -1]]
                near = [n for n in window if n < first or n > last]
            else:
                crosses = (volume.labels[window.start : window.stop] == segment).flatten(1).any(dim=1).tolist()
                near = [n for n, crossed in zip(window, crosses) if crossed and n != z]
            if not near:
                return "no_end_near" if absent else "not_in_neighbour"
            query_z = near[rng.integers(len(near))]
        support, support_mask = self._view(volume, z, segment, rng)
        if _head_area(support_mask, self.head_grid) < MIN_HEAD_AREA:
            return "too_small"
        query, query_mask = self._view(volume, query_z, segment, rng)
        if not absent and not bool(query_mask.any()):
            return "lost_in_query"
        return Episode(support, support_mask, query, query_mask)

    def _view(self, volume: TrainingVolume, z: int, segment: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice ``z`` (or its trunk features) and the segment's mask, through one random warp."""
        grid = random_warp(rng, volume.labels.shape[-1], self.ranges)
        mask = warp((volume.labels[z] == segment).float()[None, None], grid, mode="nearest")[:, 0]
        if self.from_trunk:
            return warp(volume.trunk[z : z + 1].float(), grid), mask
        image = random_gamma(rng, volume.images[z], self.ranges)
        return warp(image[None, None], grid).expand(-1, 3, -1, -1), mask


def _head_area(mask: torch.Tensor, grid: int) -> float:
    """How many positions of a ``grid`` x ``grid`` feature map ``mask`` ``[1, S, S]`` covers."""
    return float(F.interpolate(mask[:, None], size=(grid, grid), mode="bilinear", align_corners=False).sum())
