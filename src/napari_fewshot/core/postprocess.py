"""3D post-processing of one structure's mask: which connected components stay, where it ends, hole filling.

Components are 6-connected (voxels sharing a face).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: Which components of a structure may be kept: all, the largest, those touching the painting.
KEEP = ("all", "largest", "painted")
#: Past its outermost painted slices, a structure ends where its area grows more than this from one slice to the next.
GROWTH = 2.0


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


def stop_at_ends(mask: np.ndarray, painted_slices: tuple[int, ...], growth: float = GROWTH) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool cut where the structure ends, walking away from its outermost painted slices.

    Past the first and the last painted slice a structure narrows towards its tip.
    The first slice there that is empty, or that, once the area has fallen below
    the painted slice's, grows to more than ``growth`` times the previous slice's
    and beyond the painted slice's own area (a prediction that suddenly widens has
    run into a neighbour), is taken as the structure's end: it and every slice
    beyond are emptied.  A dip inside the organ that recovers below the painted
    area is kept, and a painting near a tip is followed while the structure widens.
    """
    kept = mask.copy()
    area = mask.reshape(len(mask), -1).sum(axis=1)
    for start, step in ((min(painted_slices), -1), (max(painted_slices), 1)):
        z, narrowing = start + step, False
        while 0 <= z < len(mask) and area[z] > 0:
            if narrowing and area[z] > growth * area[z - step] and area[z] > area[start]:
                break
            narrowing = narrowing or area[z] < area[start]
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
