"""3D post-processing of one structure's mask: which connected components stay, where it ends, hole filling.

Components are 6-connected (voxels sharing a face).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

#: Which components of a structure may be kept: all, the largest, those touching the painting.
KEEP = ("all", "largest", "painted")
#: Past its outermost painted slices, a structure ends where its area grows to more than this times the narrowest
#: of the slices within ``REGROWTH_MM`` before that are smaller than the painted slice (``stop_at_ends``).
GROWTH = 2.0
#: How far back (mm) a regrowth is measured from: further, an organ that narrows a little and then widens
#: over many slices (the liver painted on its middle slice) would be cut.
REGROWTH_MM = 15.0
#: Past its outermost painted slices, a structure ends at the first slice where fewer than this fraction of its
#: pixels have the painting's intensities (``stop_where_unlike``).
LIKE_FRACTION = 0.4
#: The painting's intensities: these percentiles of its pixels, ...
PAINTED_PERCENTILES = (5.0, 95.0)
#: ... widened on each side by this fraction of the width of the scan's intensity window.
INTENSITY_MARGIN = 0.025


def _components(mask: np.ndarray, by_size: bool = True) -> np.ndarray:
    """Connected components of ``mask`` numbered 1, 2, ... (from the largest when ``by_size``); 0 outside."""
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return sitk.GetArrayFromImage(sitk.RelabelComponent(components) if by_size else components)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest component of ``mask`` ``[Z, Y, X]`` bool (empty stays empty)."""
    return _components(mask) == 1 if mask.any() else mask


def largest_per_structure(labels: np.ndarray) -> np.ndarray:
    """``labels`` ``[Z, Y, X]`` with only the largest component of each non-zero value kept (the rest set to 0)."""
    kept = np.zeros_like(labels)
    for value in np.unique(labels[labels != 0]):
        kept[largest_component(labels == value)] = value
    return kept


def connected_to(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The components of ``mask`` ``[Z, Y, X]`` bool that hold a voxel of ``seeds`` (same shape, bool)."""
    components = _components(mask, by_size=False)
    touched = np.zeros(int(components.max()) + 1, dtype=bool)
    touched[components[seeds & mask]] = True
    touched[0] = False
    return touched[components]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool with the holes of each slice filled (in plane)."""
    filled = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        image = sitk.GetImageFromArray(mask[z].astype(np.uint8))
        filled[z] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False)) > 0
    return filled


def stop_at_ends(
    mask: np.ndarray, painted_slices: tuple[int, ...], within: int, growth: float = GROWTH,
) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool cut where the structure ends, walking away from its outermost painted slices.

    Past the first and the last painted slice a structure narrows towards its tip.
    The first slice there that is empty, or whose area has grown to more than
    ``growth`` times the narrowest of the ``within`` slices before it that are
    smaller than the painted slice (a prediction that widens again has run into a
    neighbour: the next vertebra, the bowel beside the gallbladder), is taken as the
    structure's end: it and every slice beyond are emptied.  A shallower dip is
    kept, as is a painting near a tip beyond which the structure widens, slowly or
    after a slight dip.

    How the rule was chosen (the broad development benchmark, 84 structures, the engine's
    default options; ``docs/experiments/19-where-a-structure-ends.md``): it replaces
    growing more than ``growth`` from one slice to the next and beyond the painted slice's area, which let a structure run
    on into a neighbour no larger than the painting.  Mean whole-volume Dice from one /
    three painted slices, that rule 0.584 / 0.797, this one 0.599 / 0.798 (from one
    slice small organs 0.563 to 0.602, large organs 0.805 to 0.831, bone 0.462 to 0.476;
    no kind lower in either), and painted on each structure's middle slice 0.586 to
    0.583 (p = 0.8; the duodenum 0.513 to 0.332).  Measured from every slice walked
    rather than 15 mm, it cut the liver painted on its middle slice (0.743 to 0.439).
    Offline, 1.5 times the narrowest cost muscle (0.730 to 0.686) and vessels (0.428 to
    0.394) from one slice.
    """
    area = mask.reshape(len(mask), -1).sum(axis=1)

    def regrown(z: int, start: int, step: int) -> bool:
        walked = abs(z - start)
        before = area[[start + step * d for d in range(max(1, walked - within), walked)]]
        narrower = before[before < area[start]]
        return bool(narrower.size and area[z] > growth * narrower.min())

    return _cut_past(mask, painted_slices, regrown)


def stop_where_unlike(
    mask: np.ndarray, image: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...], window_width: float,
    fraction: float = LIKE_FRACTION,
) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool cut where the structure no longer has the painting's intensities.

    ``image`` ``[Z, Y, X]``: the scan's intensities (file units); ``painted`` ``[Z, Y, X]``
    bool: the structure's painting on ``painted_slices``.  The painting's intensities
    are the ``PAINTED_PERCENTILES`` of its pixels, widened on each side by
    ``INTENSITY_MARGIN`` of ``window_width`` (the width of the scan's intensity window:
    a few pixels' percentiles are noisy, and a thin structure's are blurred by the
    slice).  Walking away from the outermost painted slices, the first slice where
    fewer than ``fraction`` of the mask's pixels lie within them is taken as the
    structure's end: it and every slice beyond are emptied.  A vertebra that would run on
    through a disc into the next one stops at the disc where the disc slice holds few of
    its intensities (vertebra T12 of the development data; not L3, whose neighbouring disc
    slices keep 57% and 58% in range); a look-alike of the same intensities is left to
    :func:`stop_at_ends`.

    How it was chosen (the broad development benchmark, 84 structures, the engine's
    default masks cut offline;
    ``docs/experiments/26-where-a-structure-loses-the-painting-s-intensities-it-ends.md``):
    percentiles 5 to 95, margins of 0 to 0.1 of the window and fractions of 0.3 to 0.6 were tried.  Without the margin a
    thin vessel painted with 9 pixels was cut next to its painting (an iliac artery
    0.29 to 0.03); with 0.025 and 0.4 every protocol gained and vessels lost nothing.
    """
    index = list(painted_slices)
    low, high = np.percentile(image[index][painted[index]], PAINTED_PERCENTILES)
    low, high = low - INTENSITY_MARGIN * window_width, high + INTENSITY_MARGIN * window_width

    def unlike(z: int, start: int, step: int) -> bool:
        values = image[z][mask[z]]
        return bool(np.mean((values >= low) & (values <= high)) < fraction)

    return _cut_past(mask, painted_slices, unlike)


def _cut_past(mask: np.ndarray, painted_slices: tuple[int, ...], ends_at: Callable[[int, int, int], bool]) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool emptied, on each side past the outermost ``painted_slices``, from the first
    slice that is empty or where ``ends_at(z, start, step)`` (``start`` the outermost painted slice, ``step``
    -1 or 1 the way walked) onwards."""
    kept = mask.copy()
    for start, step in ((min(painted_slices), -1), (max(painted_slices), 1)):
        z = start + step
        while 0 <= z < len(mask) and mask[z].any() and not ends_at(z, start, step):
            z += step
        if 0 <= z < len(mask):
            kept[slice(z, None) if step == 1 else slice(0, z + 1)] = False
    return kept


def set_structure(labels: np.ndarray, value: int, mask: np.ndarray) -> None:
    """Structure ``value`` of ``labels`` ``[Z, Y, X]`` becomes ``mask`` (same shape, bool), in place; where
    ``mask`` reaches beyond the structure it claims only background, never another structure."""
    held = labels == value
    labels[held & ~mask] = 0
    labels[mask & (held | (labels == 0))] = value
