"""What a segmentation is given, checked: the image, the support labels, the slices to predict.

Each check returns the value as the engine uses it, or raises
:class:`~napari_fewshot.core.errors.SegmentationError` with the fix in its message.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SegmentationError


def checked_image(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as an array, refused when it is not a 3D, finite, non-constant volume (``name`` names it)."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise SegmentationError(f"the {name} must be a 3D volume [Z, Y, X]; got {array.ndim} dimensions")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SegmentationError(f"the {name} must hold numbers; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise SegmentationError(
                f"the {name} has {bad} NaN or infinite voxels; replace them (e.g. numpy.nan_to_num) before segmenting"
            )
    if array.size == 0 or array.min() == array.max():
        value = array.flat[0] if array.size else "nothing"
        raise SegmentationError(f"the {name} is constant ({value}): there is nothing to tell the structure from")
    return array


def checked_labels(labels: np.ndarray, shape: tuple[int, ...], same_volume: bool) -> np.ndarray:
    """``labels`` as an integer array of ``shape`` (the support image's), or a clear error."""
    array = np.asarray(labels)
    if array.shape != shape:
        which = "image" if same_volume else "support image"
        raise SegmentationError(
            f"the support labels have shape {array.shape} but the {which} has {shape}; "
            f"paint the support on a label volume of the {which}'s grid"
        )
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise SegmentationError(f"the support labels must be integers (a label map); got dtype {array.dtype}")
    if array.min() < 0:
        raise SegmentationError("the support labels have negative values; use 0 for unpainted and 1, 2, ... for structures")
    return array


def checked_slices(slices: Sequence[int] | None, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The sorted distinct slice indices to predict (every slice when None), or a clear error."""
    n = shape[axis]
    if slices is None:
        return np.arange(n)
    wanted = np.unique(np.asarray(slices).reshape(-1))
    if wanted.size == 0 or not np.issubdtype(wanted.dtype, np.integer) or wanted[0] < 0 or wanted[-1] >= n:
        raise SegmentationError(f"slices must be slice indices from 0 to {n - 1} along axis {axis}; got {slices}")
    return wanted.astype(int)
