"""What a segmentation is given, checked: the image, the support labels, the slices to predict.

Each check returns the value as the engine uses it, or raises
:class:`~napari_fewshot.core.errors.SegmentationError` with the fix in its message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import SegmentationError

#: The most structures one support may paint (each is predicted on its own); far more distinct values are an image
#: given as the labels.  Raise it for a label map that truly holds more.
MAX_STRUCTURES = 100


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
    """``labels`` as an integer array of ``shape`` (the support image's) painting at most :data:`MAX_STRUCTURES`
    structures, or a clear error."""
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
    count = len(np.unique(array[array != 0]))
    if count > MAX_STRUCTURES:
        raise SegmentationError(
            f"the support labels hold {count} distinct values, each a structure to segment: this looks like an image, "
            "not a label map (0 unpainted, 1, 2, ... the painted structures); give the painted label map, or segment "
            f"at most {MAX_STRUCTURES} structures a run (or raise napari_fewshot.core.inputs.MAX_STRUCTURES)"
        )
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


def checked_absent(absent: Mapping[int, Iterable[int]] | None, structures: dict[int, tuple[int, ...]],
                   n_slices: int, same_volume: bool) -> dict[int, tuple[int, ...]]:
    """Per painted structure, the sorted slices (of ``n_slices``) the user marked it absent on, or a clear error.

    ``structures``: each painted label value with its painted slices.  A structure marked absent must be
    painted somewhere, and not on a slice it is marked absent on; marks need the painting on the image.
    """
    if not absent:
        return {}
    if not same_volume:
        raise SegmentationError(
            "absent slices say where a structure is not on the painted scan; with a support painted on another "
            "scan, leave absent out (or paint the support on the image itself)"
        )
    checked = {}
    for value, slices in absent.items():
        value = int(value)
        if value not in structures:
            raise SegmentationError(
                f"structure {value} is marked absent but painted on no slice; paint it on one slice where it is, "
                "or drop its absent slices"
            )
        marked = np.unique(np.asarray(list(slices), dtype=np.int64).reshape(-1))
        if marked.size and (marked[0] < 0 or marked[-1] >= n_slices):
            raise SegmentationError(
                f"structure {value}'s absent slices must be slice indices from 0 to {n_slices - 1}; got {list(slices)}"
            )
        both = sorted(set(marked.tolist()) & set(structures[value]))
        if both:
            raise SegmentationError(
                f"structure {value} is both painted and marked absent on slice(s) {', '.join(map(str, both))}; "
                "erase its painting there or drop the absent mark"
            )
        if marked.size:
            checked[value] = tuple(int(z) for z in marked)
    return checked
