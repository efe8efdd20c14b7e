"""3D post-processing of one structure's mask: which connected components stay, hole filling.

Components are 6-connected (voxels sharing a face).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: Which components of a structure may be kept: all, the largest, those touching the painting.
KEEP = ("all", "largest", "painted")


def _components(mask: np.ndarray) -> np.ndarray:
    """Connected components of ``mask`` numbered 1, 2, ... from the largest; 0 outside."""
    return sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest component of ``mask`` ``[Z, Y, X]`` bool (empty stays empty)."""
    return _components(mask) == 1 if mask.any() else mask


def connected_to(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The components of ``mask`` ``[Z, Y, X]`` bool that hold a voxel of ``seeds`` (same shape, bool)."""
    components = _components(mask)
    touched = np.unique(components[seeds & mask])
    return np.isin(components, touched[touched > 0])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool with the holes of each slice filled (in plane)."""
    filled = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        image = sitk.GetImageFromArray(mask[z].astype(np.uint8))
        filled[z] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False)) > 0
    return filled
