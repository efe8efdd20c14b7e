"""How sure a segmentation is, slice by slice: which slices are most worth a look.

Two measures, both in [0, 1]:

- **sure** (:func:`slice_confidence`): on each slice, a voxel is *sure* when the
  most probable structure's probability is at least ``SURE`` and *unsure* when it
  lies in ``[1 - SURE, SURE)``; the slice's confidence is the share of sure voxels
  among both.  A slice with neither (nothing predicted, nothing close) is fully
  confident.
- **presence** (:func:`structure_presence`), per structure: how much what was
  predicted on a slice resembles the structure's prototypes, on the scale the
  painted slice itself sets.  1: as alike as the painting is to its own
  prototypes; 0: no more alike than the painted slice's background, or nothing
  predicted.  Low presence on a predicted slice says the prediction there may be
  something else; the slices where it falls away are where the structure ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: A probability at least this far from 0.5 (either side) counts as sure.
SURE = 0.75


def slice_confidence(probabilities: Iterable[np.ndarray], axis: int = 0) -> np.ndarray:
    """Confidence in [0, 1] of each slice along ``axis``: ``[Z]`` float64.

    probabilities : one foreground probability volume per structure, all of one shape.
    """
    strongest = None
    for probability in probabilities:
        strongest = probability if strongest is None else np.maximum(strongest, probability)
    if strongest is None:
        raise ValueError("slice_confidence needs at least one probability volume")
    strongest = np.moveaxis(strongest, axis, 0).reshape(strongest.shape[axis], -1)
    sure = np.count_nonzero(strongest >= SURE, axis=1)
    unsure = np.count_nonzero((strongest >= 1 - SURE) & (strongest < SURE), axis=1)
    seen = sure + unsure
    return np.where(seen > 0, sure / np.maximum(seen, 1), 1.0)


def similarity_levels(attention: np.ndarray, painted: np.ndarray) -> np.ndarray:
    """``[S, 2]``: mean attention inside and outside the painting of each painted slice.

    attention : ``[S, H, W]``, each painted slice's similarity to its own prototypes;
    painted : ``[S, H, W]`` bool, its painting.
    """
    inside = [a[m].mean() if m.any() else 1.0 for a, m in zip(attention, painted)]
    outside = [a[~m].mean() if (~m).any() else -1.0 for a, m in zip(attention, painted)]
    return np.stack([inside, outside], axis=1).astype(np.float64)


def structure_presence(attention: np.ndarray, predicted: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Presence in [0, 1] of one structure on each slice: ``[Z]`` float64.

    attention : ``[Z, H, W]``, similarity to the structure's prototypes; predicted :
    ``[Z, H, W]`` bool, where it is predicted; levels : ``[Z, 2]``, the inside and
    outside levels (:func:`similarity_levels`) of the painted slice(s) each slice
    takes its support from.  The mean attention over a slice's prediction is placed
    between the two levels; a slice with nothing predicted has presence 0.
    """
    presence = np.zeros(len(predicted))
    for z in np.flatnonzero(predicted.reshape(len(predicted), -1).any(axis=1)):  # slice by slice: no volume-sized copy
        inside, outside = levels[z]
        presence[z] = (attention[z][predicted[z]].mean() - outside) / max(inside - outside, 1e-6)
    return np.clip(presence, 0.0, 1.0)


@dataclass(frozen=True)
class SliceToCheck:
    """A slice worth a look: its ``sure`` confidence, the least present structure predicted
    on it (``weakest``: label value and presence, None when none is), the structures
    whose prediction begins or ends on it (``ends``: label value and ``first`` or ``last``;
    on the volume's first or last slice, ``scan start`` or ``scan end``: it may go on
    beyond the scan), the structure whose prediction there is likely wrong the most
    (``structure``, None when none is predicted there) and how many slices lie between it
    and that structure's nearest painted or absent slice (``far``)."""

    slice: int
    sure: float
    weakest: tuple[int, float] | None
    ends: tuple[tuple[int, str], ...]
    structure: int | None
    far: int


def slices_to_check(
    sure: np.ndarray,
    presence: dict[int, np.ndarray],
    areas: dict[int, np.ndarray],
    known: dict[int, Iterable[int]],
    count: int = 10,
) -> list[SliceToCheck]:
    """The slices most worth a look, at most ``count``, the one a correction helps most first; a structure
    counts only on the slices it is not ``known`` on (per label value, the slices the user painted it on or
    marked it absent on).

    sure : ``[Z]`` from :func:`slice_confidence`; presence : per label value, ``[Z]`` from
    :func:`structure_presence`; areas : per label value, ``[Z]`` the voxels predicted on
    each slice.  A slice's expected error is, over the structures predicted there, the
    largest area times the slices between it and that structure's nearest known slice: the
    head's error grows with the distance from its support, and a large area holds more of
    it (painting by that measure comes within reach of painting where the error is largest,
    on the development data).  The slices go by expected error, largest first (ties: lower
    slice first); where each structure's prediction begins and ends (``scan start`` or
    ``scan end`` where it reaches the volume's first or last slice) is always listed.
    """
    n = len(sure)
    index = np.arange(n)
    expected, structure, far = np.zeros(n), np.full(n, -1), np.zeros(n, dtype=int)
    ends: dict[int, list[tuple[int, str]]] = {}
    unknown = {}
    for value, area in areas.items():
        marked = np.array(sorted(set(known.get(value, ()))), dtype=int)
        distance = np.abs(index[:, None] - marked[None]).min(axis=1) if marked.size else np.full(n, n)
        unknown[value] = (area > 0) & (distance > 0)
        error = np.where(unknown[value], area * distance, 0.0)
        better = error > expected
        expected[better], structure[better], far[better] = error[better], value, distance[better]
        held = np.flatnonzero(area > 0)
        for z, which, at_edge in ((held[:1], "first", "scan start"), (held[-1:], "last", "scan end")):
            if z.size and unknown[value][z[0]]:
                ends.setdefault(int(z[0]), []).append((value, at_edge if z[0] in (0, n - 1) else which))
    weakest = {}
    for z in np.flatnonzero(expected > 0).tolist():
        weakest[z] = min(((v, float(presence[v][z])) for v in areas if unknown[v][z]), key=lambda p: p[1])
    ranked = sorted(np.flatnonzero(expected > 0).tolist(), key=lambda z: (-expected[z], z))
    listed = [z for z in ranked if z not in ends][: max(count - len(ends), 0)] + sorted(ends, key=lambda z: -expected[z])
    chosen = sorted(listed, key=lambda z: (-expected[z], z))[:count]
    return [SliceToCheck(z, float(sure[z]), weakest.get(z), tuple(ends.get(z, ())),
                         None if structure[z] < 0 else int(structure[z]), int(far[z])) for z in chosen]


#: Below this presence a structure's prediction on a slice is said to look unlike its painting.
UNLIKE = 0.5


def check_reason(item: SliceToCheck, names: dict[int, str]) -> str:
    """Why ``item``'s slice is worth a look, in words: how far the structure is from its paintings, or where
    it begins or ends (or runs off the scan); and where it looks unlike its painting.  ``names``: per label
    value."""

    def called(value: int) -> str:
        return names.get(value, f"structure {value}")

    far = f"{item.far} slice{'' if item.far == 1 else 's'}"
    reasons = [f"{called(item.structure)} is {far} from its nearest painted slice"] if (
        item.structure is not None and not item.ends) else []
    reasons += [{
        "first": f"{called(value)} begins here: is the slice before empty?",
        "last": f"{called(value)} ends here: is the slice after empty?",
        "scan start": f"{called(value)} reaches the scan's first slice: it may go on beyond the scan",
        "scan end": f"{called(value)} reaches the scan's last slice: it may go on beyond the scan",
    }[which] for value, which in item.ends]
    if item.weakest is not None and item.weakest[1] < UNLIKE:
        reasons.append(f"{called(item.weakest[0])} looks unlike the painting ({item.weakest[1]:.0%} alike)")
    return f"slice {item.slice}: {'; '.join(reasons)}"
