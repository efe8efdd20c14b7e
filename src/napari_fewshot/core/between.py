"""Several painted slices: the structure held to what the paintings imply between them and past the outermost.

When a structure is painted on several slices, the user has said where it is on
each and, by painting them, that it runs from one to the next.  Two rules, each
its own function, make one structure's mask keep to that:

- :func:`hold_between`: between two neighbouring painted slices, the mask stays
  within ``margin`` mm of the shape interpolated between their paintings (linear
  blend of signed distance maps, the shape-based interpolation of Raya and Udupa
  1990), with ``margin = 2 (SIGMA_MM + WIDENING d)`` as wide as twice the location
  prior's width, ``d`` the distance (mm) to the nearer painted slice; a slice there
  left empty takes the interpolated shape;
- :func:`hold_past`: past the outermost painted slices, the structure goes on at
  most as many slices as lie between that painted slice and its painted neighbour
  (the paintings spread over the structure; a structure running on past that is
  taken to have run into a look-alike).

With one painted slice neither changes anything.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .priors import SIGMA_MM, WIDENING


def signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Signed distance (mm) to the boundary of ``mask`` ``[Y, X]`` bool: negative inside, positive outside.

    ``spacing``: mm per row and per column.  An empty mask is infinitely far everywhere.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) - ndimage.distance_transform_edt(mask, sampling=spacing)


def hold_between(
    mask: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...], spacing: tuple[float, float, float],
) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool of one structure held near the shape between its paintings; a new array.

    painted : ``[Z, Y, X]`` bool, where the structure is painted (on ``painted_slices``).
    spacing : voxel size in mm per axis, slice axis first.
    """
    order = sorted(set(painted_slices))
    held = mask.copy()
    if len(order) < 2:
        return held
    distances = {z: signed_distance(painted[z], spacing[1:]) for z in order}
    for a, b in zip(order[:-1], order[1:]):
        for z in range(a + 1, b):
            weight = (z - a) / (b - a)
            shape = (1 - weight) * distances[a] + weight * distances[b]
            margin = 2 * (SIGMA_MM + WIDENING * min(z - a, b - z) * spacing[0])
            held[z] &= shape < margin
            if not held[z].any():
                held[z] = shape < 0
    return held


def hold_past(mask: np.ndarray, painted_slices: tuple[int, ...]) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool of one structure emptied more than one gap between paintings past the
    outermost painted slices (a new array; with one painted slice, a copy)."""
    order = sorted(set(painted_slices))
    held = mask.copy()
    if len(order) > 1:
        low, high = order[0] - (order[1] - order[0]), order[-1] + (order[-1] - order[-2])
        held[: max(low, 0)] = False
        held[high + 1 :] = False
    return held

