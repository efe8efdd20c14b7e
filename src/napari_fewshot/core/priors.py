"""Where a structure can be: an in-plane location prior from the painting, and a decay along the slice axis.

Organs move little from one slice to the next.  Each slice's probabilities are
scaled by a Gaussian of the in-plane distance (mm) to the painting of the
painted slice it takes its support from, whose width grows with the distance
(mm) between the two slices:

    prior = exp(-d² / (2 σ²)),   σ = SIGMA_MM + WIDENING · |Δz| mm

Inside the painting the prior is 1, so what the head finds there stays; far
from it in-plane, on a near slice, a look-alike is damped.  Distances are in
millimetres, so slices 0.5 or 10 mm apart are treated alike.

The decay (off by default: it cuts an organ's tip far from a single painted
slice) scales each slice by ``exp(-d / length)``, ``d`` the distance in mm to the
nearest painted slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .support import assign_supports

#: The prior's width (mm) on the painted slice itself.
SIGMA_MM = 5.0
#: How much the width grows (mm) per mm between a slice and its painted slice.
WIDENING = 0.5
#: The decay's length (mm) where it is asked for without one.
DECAY_MM = 100.0


def apply_location_prior(
    probability: np.ndarray,
    painted: np.ndarray,
    painted_slices: tuple[int, ...],
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    queries: np.ndarray | None = None,
) -> None:
    """Scale ``probability`` ``[Z, Y, X]`` float in place by the location prior of one structure.

    painted : ``[Z, Y, X]`` bool, where the structure is painted (on ``painted_slices``).
    spacing : voxel size in mm per axis (slice axis first).  queries : the slices to
    scale (default all).  A slice equally near two painted slices is measured from
    the nearer of their paintings in plane.
    """
    n = len(probability)
    wanted = np.arange(n) if queries is None else np.asarray(queries)
    distance = {z: ndimage.distance_transform_edt(~painted[z], sampling=spacing[1:]) for z in painted_slices}
    for support, group in assign_supports(n, n, painted_slices).items():
        in_plane = np.minimum.reduce([distance[z] for z in support])
        for z in np.intersect1d(group, wanted):
            sigma = SIGMA_MM + WIDENING * abs(z - support[0]) * spacing[0]
            probability[z] *= np.exp(-0.5 * (in_plane / sigma) ** 2)


def apply_distance_decay(
    probability: np.ndarray,
    painted_slices: tuple[int, ...],
    slice_mm: float,
    length_mm: float,
    queries: np.ndarray | None = None,
) -> None:
    """Scale ``probability`` ``[Z, Y, X]`` float in place by ``exp(-d / length_mm)`` on each slice.

    ``d``: the distance in mm (``slice_mm`` per slice) from the slice to the nearest of
    ``painted_slices``.  queries : the slices to scale (default all).
    """
    wanted = np.arange(len(probability)) if queries is None else np.asarray(queries)
    distance = np.abs(wanted[:, None] - np.asarray(painted_slices)[None]).min(axis=1) * slice_mm
    probability[wanted] *= np.exp(-distance / length_mm).astype(probability.dtype)[:, None, None]
