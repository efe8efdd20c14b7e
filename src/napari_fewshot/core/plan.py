"""How many slices a segmentation expects to encode, predict, draw and follow, told to its progress as it learns.

Before the outward walk has predicted anything, a structure is expected over the
slices :func:`~napari_fewshot.core.outward.planned_range` gives; each batch of the
walk narrows that (:meth:`SlicePlan.expect`), and once a structure is walked the
slices it was found on are known (:meth:`SlicePlan.walked`).  The decoder draws, and
registration follows, only the slices a structure is on.
"""

from __future__ import annotations

import numpy as np

from .features import VolumeFeatures
from .progress import RunProgress


class SlicePlan:
    """The slices a segmentation expects to encode, predict, have the decoder draw and registration follow,
    told to its ``clock``.

    planned : per structure, the slices it is expected to be predicted on (from the outward
        walk's estimate until the walk has ended: :meth:`expect`, :meth:`walked`).
    features : the image's features (what is encoded); painted : slices encoded first.
    spare : of a structure's planned slices, how many are expected empty (the walk's margins),
        so neither drawn nor followed.
    follow : whether registration carries every structure's boundaries (on the slices it is on).
    """

    def __init__(self, clock: RunProgress, features: VolumeFeatures, painted: np.ndarray,
                 planned: dict[int, np.ndarray], spare: int, follow: bool) -> None:
        self.clock, self.features, self.painted, self.planned, self.spare = clock, features, painted, planned, spare
        self.follow = follow
        self.drawing: set[int] = set()  # the structures whose boundaries the decoder draws
        self.present: dict[int, int] = {}  # per structure walked, the slices it is on (those the decoder draws)
        self._tell()

    def draw(self, structures: set[int]) -> None:
        """The decoder will draw these structures' boundaries."""
        self.drawing = structures
        self._tell()

    def expect(self, value: int, first: int, last: int) -> None:
        """Structure ``value`` is now expected on the slices ``first`` to ``last`` (clipped to the scan)."""
        self.planned[value] = np.arange(max(first, 0), min(last, len(self.features.encoded) - 1) + 1)
        self._tell()

    def walked(self, value: int, examined: np.ndarray, probability: np.ndarray, threshold: float) -> None:
        """Structure ``value`` was predicted on the ``examined`` slices (``[Z]`` bool), with ``probability``
        ``[Z, Y, X]``: found where it exceeds ``threshold``."""
        self.planned[value] = np.flatnonzero(examined)
        found = probability[self.planned[value]] > threshold
        self.present[value] = int(np.count_nonzero(found.reshape(len(found), -1).any(axis=1)))
        self._tell()

    def _tell(self) -> None:
        ahead = np.unique(np.concatenate([*self.planned.values(), self.painted]))
        present = {v: self.present.get(v, max(len(p) - self.spare, 1)) for v, p in self.planned.items()}
        self.clock.plan(encode=self.clock.finished["encode"] + len(self.features.missing(ahead)),
                        head=sum(len(p) for p in self.planned.values()),
                        draw=sum(present[v] for v in self.drawing), follow=sum(present.values()) if self.follow else 0)
