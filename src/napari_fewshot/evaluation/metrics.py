"""Overlap and surface metrics of a predicted mask against the truth, in millimetres.

Masks are boolean arrays of one shape (2D or 3D); ``spacing`` is the voxel size
in mm per array axis.  Surfaces are the mask voxels with a neighbour outside
the mask (face connectivity); distances are Euclidean between voxel centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|); 1 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(prediction.sum()) + int(truth.sum())
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total if total else 1.0


def jaccard(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard index |P∩T| / |P∪T|; 1 when both are empty."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    union = int(np.logical_or(prediction, truth).sum())
    return int(np.logical_and(prediction, truth).sum()) / union if union else 1.0


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that touch a voxel outside it along an axis (or the array's edge)."""
    mask = np.asarray(mask, bool)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~inner


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    to_b = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return to_b[surface(a)]


def _both_ways(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """Surface distances prediction -> truth and truth -> prediction (mm); None unless both masks hold voxels.

    Both are measured in the masks' common bounding box grown by one voxel, which
    holds every surface voxel and gives the same surfaces as the whole array.
    """
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape or len(spacing) != truth.ndim:
        raise ValueError(f"masks {prediction.shape} and {truth.shape} need one shape and one spacing per axis ({spacing})")
    if not prediction.any() or not truth.any():
        return None
    both = np.argwhere(prediction | truth)
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(both.min(axis=0), both.max(axis=0)))
    prediction, truth = prediction[box], truth[box]
    return _surface_distances(prediction, truth, spacing), _surface_distances(truth, prediction, spacing)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The 95th percentile of the distances from each surface to the other, both
    directions pooled.  0 when both masks are empty; ``inf`` when only one is
    (no surface to measure to).
    """
    distances = _both_ways(prediction, truth, spacing)
    if distances is None:
        return 0.0 if not np.any(prediction) and not np.any(truth) else float("inf")
    return float(np.percentile(np.concatenate(distances), 95))


def average_surface_distance(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm: the mean of both directions' surface distances pooled.

    0 when both masks are empty; ``inf`` when only one is.
    """
    distances = _both_ways(prediction, truth, spacing)
    if distances is None:
        return 0.0 if not np.any(prediction) and not np.any(truth) else float("inf")
    return float(np.concatenate(distances).mean())


def surface_dice(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0) -> float:
    """Normalised surface Dice: the share of both surfaces within ``tolerance`` mm of the other.

    1 when both masks are empty, 0 when only one is.
    """
    distances = _both_ways(prediction, truth, spacing)
    if distances is None:
        return 1.0 if not np.any(prediction) and not np.any(truth) else 0.0
    close = sum(int((d <= tolerance).sum()) for d in distances)
    return close / sum(len(d) for d in distances)


def claims(probabilities: dict[int, np.ndarray], threshold: float, labels: np.ndarray,
           truth: np.ndarray) -> dict[int, dict[str, int]]:
    """Where structures painted together compete: per label value, the voxels it claims together with another
    (both probabilities above ``threshold``), of those the ones it won (``labels`` holds it there) and, by the
    ``truth`` label map, the ones it won rightly and the ones it lost though they are its own.

    probabilities : per label value ``[Z, Y, X]`` float; labels, truth : ``[Z, Y, X]`` label maps.
    """
    above = np.zeros(truth.shape, dtype=np.uint8)
    for probability in probabilities.values():
        above += probability > threshold
    contested = above > 1
    counts = {}
    for value, probability in probabilities.items():
        mine = contested & (probability > threshold)
        won, own = mine & (labels == value), mine & (truth == value)
        counts[value] = {"contested": int(mine.sum()), "won": int(won.sum()), "won_rightly": int((won & own).sum()),
                         "lost_own": int((own & ~won).sum())}
    return counts
