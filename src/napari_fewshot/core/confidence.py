"""How sure a segmentation is, slice by slice: which slices are most worth a look.

On each slice, a voxel is *sure* when the most probable structure's probability
is at least ``SURE`` and *unsure* when it lies in ``[1 - SURE, SURE)``; the
slice's confidence is the share of sure voxels among both.  A slice with
neither (nothing predicted, nothing close) is fully confident.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: A probability at least this far from 0.5 (either side) counts as sure.
SURE = 0.75


def slice_confidence(probabilities: Iterable[np.ndarray], axis: int = 0) -> np.ndarray:
    """Confidence in [0, 1] of each slice along ``axis``: ``[Z]`` float64.

    probabilities : one foreground probability volume per structure, all of one shape.
    """
    strongest = None
    for probability in probabilities:
        strongest = probability if strongest is None else np.maximum(strongest, probability)
    if strongest is None:
        raise ValueError("slice_confidence needs at least one probability volume")
    strongest = np.moveaxis(strongest, axis, 0).reshape(strongest.shape[axis], -1)
    sure = np.count_nonzero(strongest >= SURE, axis=1)
    unsure = np.count_nonzero((strongest >= 1 - SURE) & (strongest < SURE), axis=1)
    seen = sure + unsure
    return np.where(seen > 0, sure / np.maximum(seen, 1), 1.0)


def slices_to_check(
    confidence: np.ndarray, predicted: np.ndarray, painted: Iterable[int], count: int = 10
) -> list[tuple[int, float]]:
    """The ``count`` least confident slices that hold a prediction and were not painted.

    confidence : ``[Z]`` from :func:`slice_confidence`; predicted : ``[Z]`` bool, the
    slices with any predicted voxel.  Returns ``(slice, confidence)`` pairs, least
    confident first (ties: lower slice first).
    """
    candidates = np.flatnonzero(predicted & ~np.isin(np.arange(len(confidence)), list(painted)))
    order = candidates[np.argsort(confidence[candidates], kind="stable")][:count]
    return [(int(z), float(confidence[z])) for z in order]
