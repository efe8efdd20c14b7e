"""The support a user painted: which structures, on which slices, and which query uses which.

A label volume ``[Z, Y, X]`` holds the painting: value ``v`` is structure ``v``,
zero is unpainted.  A slice painted for structure ``v`` is ``v``'s whole truth there (what
is not painted ``v`` is not ``v``) and says nothing of the structures not painted on it:
those are unknown there, and predicted as on any other slice.  That a structure is
absent on a slice is said apart from the painting (``absent``: per label value,
slice indices), and bounds it: past an absent slice, on the side away from its
paintings, nothing of it is predicted (:func:`limits`). Each query slice takes its
support from the nearest slice on which that structure is painted; when two painted
slices are equally near it takes both. This generalises the evaluation protocol's
chunk rule (each third of the extent uses its own support slice) to any number of
painted slices. For a support from another volume, slices are matched by their
relative position along the slice axis.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import SegmentationError

#: A painted slice with more than this share of its voxels painted leaves little background: a warning.
MOSTLY_PAINTED = 0.9


class SupportWarning(UserWarning):
    """A support the engine can segment from, though probably not as it was meant."""


def painted_slices(support_labels: np.ndarray) -> np.ndarray:
    """Indices of the slices of ``support_labels`` ``[Z, Y, X]`` with any painted voxel."""
    return np.flatnonzero(support_labels.reshape(len(support_labels), -1).any(axis=1))


def painted_structures(support_labels: np.ndarray) -> dict[int, tuple[int, ...]]:
    """Each label value painted in ``support_labels`` ``[Z, Y, X]``, with the slices it is painted on.

    Each structure is told from the unpainted part of its painted slices: a slice
    painted on every voxel is refused (nothing would tell structure from
    background, and the whole volume would be labelled), and one painted on more
    than :data:`MOSTLY_PAINTED` of its voxels gives a :class:`SupportWarning`.
    """
    slices = painted_slices(support_labels)
    if len(slices) == 0:
        raise SegmentationError("the support has no painted voxel; paint the structure on at least one slice")
    for z in slices:
        share = np.count_nonzero(support_labels[z]) / support_labels[z].size
        if share == 1:
            raise SegmentationError(
                f"slice {z} of the support is painted on every voxel: each structure is learnt against the "
                "unpainted background of its painted slices, so the whole volume would be labelled. "
                "Paint only the structure and leave the rest unpainted (0)"
            )
        if share > MOSTLY_PAINTED:
            warnings.warn(
                f"slice {z} of the support is {share:.0%} painted: little background is left to tell the structure "
                "from, and the prediction may cover most of the volume. Leave what is not the structure unpainted (0)",
                SupportWarning,
                stacklevel=2,
            )
    structures: dict[int, list[int]] = {}
    for z in slices:
        for value in np.unique(support_labels[z]):
            if value != 0:
                structures.setdefault(int(value), []).append(int(z))
    return {value: tuple(slices) for value, slices in sorted(structures.items())}


def limits(painted: tuple[int, ...], absent: tuple[int, ...], n_slices: int) -> tuple[int, int]:
    """The first and last slice (of ``n_slices``) a structure painted on ``painted`` may be on: bounded by the
    nearest ``absent`` slice before its first painted slice and after its last (an absent slice between two
    paintings only clears that slice)."""
    below = [z for z in absent if z < min(painted)]
    above = [z for z in absent if z > max(painted)]
    return (max(below) + 1 if below else 0, min(above) - 1 if above else n_slices - 1)


def as_painted(labels: np.ndarray, painting: np.ndarray, structures: dict[int, tuple[int, ...]]) -> None:
    """Each structure's painted slices of ``labels`` ``[Z, Y, X]`` made as painted in ``painting``, in place:
    the structure exactly where it is painted there, the other structures' predictions on those slices kept
    (outside what is painted)."""
    for value, slices in structures.items():
        index = list(slices)
        part, painted = labels[index], painting[index]
        part[part == value] = 0
        part[painted != 0] = painted[painted != 0]
        labels[index] = part


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


def walks_from_painted(painted: tuple[int, ...], n_slices: int) -> list[tuple[int, range]]:
    """The walks that reach every slice ``0..n_slices-1`` from its nearest painted slice, one step at a time.

    Each walk is ``(painted slice, slices in walking order)``: up to halfway to the next
    painted slice, then down to halfway to the previous one (a slice halfway between two
    painted slices goes with the lower).  Propagating tools walk a mask so.
    """
    order = sorted(set(painted))
    walks = []
    for i, seed in enumerate(order):
        lowest = (order[i - 1] + seed) // 2 + 1 if i > 0 else 0
        highest = (seed + order[i + 1]) // 2 if i + 1 < len(order) else n_slices - 1
        walks += [(seed, range(seed + 1, highest + 1)), (seed, range(seed - 1, lowest - 1, -1))]
    return walks
