"""The support a user painted: which structures, on which slices, and which query uses which.

A label volume ``[Z, Y, X]`` holds the painting: value ``v`` is structure ``v``,
zero is unpainted.  Each query slice takes its support from the nearest slice on
which that structure is painted; when two painted slices are equally near it
takes both.  This generalises the evaluation protocol's chunk rule (each third
of the extent uses its own support slice) to any number of painted slices.  For
a support from another volume, slices are matched by their relative position
along the slice axis.
"""

from __future__ import annotations

import numpy as np

from .errors import SegmentationError


def painted_slices(support_labels: np.ndarray) -> np.ndarray:
    """Indices of the slices of ``support_labels`` ``[Z, Y, X]`` with any painted voxel."""
    return np.flatnonzero(support_labels.reshape(len(support_labels), -1).any(axis=1))


def painted_structures(support_labels: np.ndarray) -> dict[int, tuple[int, ...]]:
    """Each label value painted in ``support_labels`` ``[Z, Y, X]``, with the slices it is painted on."""
    slices = painted_slices(support_labels)
    if len(slices) == 0:
        raise SegmentationError("the support has no painted voxel; paint the structure on at least one slice")
    structures: dict[int, list[int]] = {}
    for z in slices:
        for value in np.unique(support_labels[z]):
            if value != 0:
                structures.setdefault(int(value), []).append(int(z))
    return {value: tuple(slices) for value, slices in sorted(structures.items())}


def assign_supports(
    n_query: int, n_support: int, painted: tuple[int, ...]
) -> dict[tuple[int, ...], list[int]]:
    """Group the query slices ``0..n_query-1`` by the painted support slice(s) nearest to them.

    ``painted`` are slice indices of a support volume of ``n_support`` slices (the
    same volume when ``n_support == n_query``).  Query slice ``z`` sits at
    ``z * (n_support - 1) / (n_query - 1)`` of the support's axis; ties take both.
    """
    scale = (n_support - 1) / (n_query - 1) if n_query > 1 else 0.0
    support = np.asarray(painted, dtype=float)
    groups: dict[tuple[int, ...], list[int]] = {}
    for z in range(n_query):
        distance = np.abs(support - z * scale)
        nearest = tuple(int(s) for s in support[np.isclose(distance, distance.min())])
        groups.setdefault(nearest, []).append(z)
    return groups
