"""Axis-aligned views of a volume: the file's array transposed and flipped to LPS.

A scan acquired coronally or sagittally (or stored RAS-flipped) has a direction
matrix that permutes or mirrors its array axes.  Viewers that slice along array
axes (napari among them: it cannot slice a layer whose transform swaps axes)
need the array laid out along the physical axes instead.  :class:`Orientation`
describes that layout as numpy views (no copy), and :func:`view_geometry` gives
the exact geometry of the view, so nothing is resampled and the file's own
layout is restored exactly by :func:`from_view` before writing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .geometry import Geometry


@dataclass(frozen=True)
class Orientation:
    """``view = file_array.transpose(axes)`` then reversed along each axis where ``flip``.

    Both in array (z, y, x) order: view axis ``a`` is file axis ``axes[a]``.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)

    def to_dict(self) -> dict[str, Any]:
        return {"axes": list(self.axes), "flip": list(self.flip)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Orientation:
        axes = tuple(int(a) for a in values["axes"])
        flip = tuple(bool(f) for f in values["flip"])
        if sorted(axes) != [0, 1, 2] or len(flip) != 3:
            raise ValueError(f"not an orientation of 3 axes: {values}")
        return cls(axes, flip)  # type: ignore[arg-type]


def closest_canonical(geometry: Geometry) -> Orientation:
    """The transpose and flips that bring the array closest to identity direction (LPS).

    Each view axis takes the file axis whose direction is nearest to that physical
    axis (largest cosine first), and is flipped where it points the other way.
    An oblique residual stays in the view's direction.
    """
    cosines = geometry.napari_rotate  # [physical axis (z, y, x), file array axis]
    remaining = np.abs(cosines)
    axes = [0, 0, 0]
    for _ in range(3):
        physical, file_axis = np.unravel_index(np.argmax(remaining), remaining.shape)
        axes[physical] = int(file_axis)
        remaining[physical, :] = -1
        remaining[:, file_axis] = -1
    flip = tuple(bool(cosines[a, axes[a]] < 0) for a in range(3))
    return Orientation(tuple(axes), flip)  # type: ignore[arg-type]


def to_view(data: np.ndarray, orientation: Orientation) -> np.ndarray:
    """The file-layout array ``data`` (z, y, x) seen in ``orientation``'s layout (a view)."""
    view = np.transpose(data, orientation.axes)
    return view[tuple(slice(None, None, -1) if f else slice(None) for f in orientation.flip)]


def from_view(view: np.ndarray, orientation: Orientation) -> np.ndarray:
    """Undo :func:`to_view`: the array back in the file's layout (a view)."""
    unflipped = view[tuple(slice(None, None, -1) if f else slice(None) for f in orientation.flip)]
    return np.transpose(unflipped, np.argsort(orientation.axes))


def view_geometry(geometry: Geometry, orientation: Orientation) -> Geometry:
    """The exact geometry of :func:`to_view`'s array: same voxels, other index order."""
    file_shape = np.asarray(geometry.shape)
    axes = list(orientation.axes)
    corner = np.where(orientation.flip, file_shape[axes] - 1, 0)  # view voxel 0 in file indices (view order)
    first_voxel = np.zeros(3)
    first_voxel[axes] = corner
    signs = np.where(orientation.flip, -1.0, 1.0)
    view = Geometry.from_napari_transform(
        shape=tuple(file_shape[axes]),
        scale=np.asarray(geometry.napari_scale)[axes],
        translate=geometry.index_to_physical(first_voxel)[::-1],
        rotate=geometry.napari_rotate[:, axes] * signs,
        pixel_type=geometry.pixel_type,
    )
    return replace(view, source=geometry.source)
