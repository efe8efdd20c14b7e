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
- :func:`hold_past`: past an outermost painted slice where the structure narrows
  (its painting smaller than :data:`NARROWS` of its painted neighbour's), the structure
  goes on at most as far as its area, falling as it does from the neighbour to that
  painting, takes to reach 0, and at least as many slices as lie between the two (a
  structure running on past that is taken to have run into a look-alike).  Where it
  does not narrow, the paintings say nothing of where it ends (a correction painted
  beside the first painting), and it is left to end where it does; a user who knows
  says so by marking the slice past the end absent.

With one painted slice neither changes anything.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .priors import SIGMA_MM, WIDENING

#: An outermost painting is taken for near the structure's end only where its area is below this fraction of its
#: painted neighbour's (an ellipsoid painted at 1/6 and 1/2 of its extent: 0.56).
NARROWS = 0.8


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


def hold_past(mask: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...]) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool of one structure emptied past each outermost painted slice where it narrows,
    beyond where its narrowing ends it (at least one gap between paintings; a new array; with one painted slice,
    a copy).

    painted : ``[Z, Y, X]`` bool, where the structure is painted (on ``painted_slices``).
    """
    order = sorted(set(painted_slices))
    held = mask.copy()
    if len(order) > 1:
        for outer, inner, step in ((order[0], order[1], -1), (order[-1], order[-2], 1)):
            reach = _narrowed_reach(np.count_nonzero(painted[outer]), np.count_nonzero(painted[inner]),
                                    abs(outer - inner))
            if reach is not None:
                end = outer + step * reach
                if step < 0:
                    held[: max(end, 0)] = False
                else:
                    held[end + 1 :] = False
    return held


def _narrowed_reach(outer: int, inner: int, gap: int) -> int | None:
    """Slices past an outermost painting of area ``outer`` (pixels) a structure is let go on, its neighbouring
    painting ``gap`` slices in of area ``inner``: where its area, falling on as from one to the other, reaches 0,
    and at least ``gap``; None where it does not narrow (no hold)."""
    if outer >= NARROWS * inner:
        return None
    return max(gap, math.ceil(gap * outer / (inner - outer)))

