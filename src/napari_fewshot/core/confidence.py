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
    on it (``weakest``: label value and presence, None when none is), and the structures
    whose prediction begins or ends on it (``ends``: label value and ``first`` or ``last``;
    on the volume's first or last slice, ``scan start`` or ``scan end``: it may go on
    beyond the scan).  ``structure``: the label value to look at there first (the first
    of ``ends``, else the weakest)."""

    slice: int
    sure: float
    weakest: tuple[int, float] | None
    ends: tuple[tuple[int, str], ...]

    @property
    def structure(self) -> int | None:
        return self.ends[0][0] if self.ends else None if self.weakest is None else self.weakest[0]


def slices_to_check(
    sure: np.ndarray,
    presence: dict[int, np.ndarray],
    predicted: dict[int, np.ndarray],
    known: dict[int, Iterable[int]],
    count: int = 10,
) -> list[SliceToCheck]:
    """The slices most worth a look, at most ``count``: where each structure's prediction begins and ends,
    then the predicted slices least sure or least present; a structure counts only on the slices it is not
    ``known`` on (per label value, the slices the user painted it on or marked it absent on).

    sure : ``[Z]`` from :func:`slice_confidence`; presence, predicted : per label value,
    ``[Z]`` from :func:`structure_presence` and ``[Z]`` bool (slices holding that
    structure).  A prediction that reaches the first or last slice of the volume is
    listed there as ``scan start`` or ``scan end``.  Ends come first (in slice order),
    then the rest by min(sure, weakest presence), lowest first (ties: lower slice first).
    """
    n = len(sure)
    unknown = {v: ~np.isin(np.arange(n), list(known.get(v, ()))) for v in predicted}
    ends: dict[int, list[tuple[int, str]]] = {}
    for value, held in predicted.items():
        slices = np.flatnonzero(held)
        for z, which, edge, at_edge in ((slices[:1], "first", 0, "scan start"), (slices[-1:], "last", n - 1, "scan end")):
            if z.size and unknown[value][z[0]]:
                ends.setdefault(int(z[0]), []).append((value, at_edge if z[0] == edge else which))
    weakest = {}
    for z in range(n):
        open_here = [(v, float(presence[v][z])) for v, held in predicted.items() if held[z] and unknown[v][z]]
        if open_here:
            weakest[z] = min(open_here, key=lambda p: p[1])
    score = {z: min(float(sure[z]), weakest[z][1]) for z in weakest}
    rest = sorted((z for z in score if z not in ends), key=lambda z: (score[z], z))
    chosen = (sorted(ends) + rest)[:count]
    return [SliceToCheck(z, float(sure[z]), weakest.get(z), tuple(ends.get(z, ()))) for z in chosen]


#: Below this presence a structure's prediction on a slice is said to look unlike its painting.
UNLIKE = 0.5


def check_reason(item: SliceToCheck, names: dict[int, str]) -> str:
    """Why ``item``'s slice is worth a look, in words: where a structure begins or ends (or runs off the
    scan), where it looks unlike its painting, or else an unsure boundary.  ``names``: per label value."""

    def called(value: int) -> str:
        return names.get(value, f"structure {value}")

    reasons = [{
        "first": f"{called(value)} begins here: is the slice before empty?",
        "last": f"{called(value)} ends here: is the slice after empty?",
        "scan start": f"{called(value)} reaches the scan's first slice: it may go on beyond the scan",
        "scan end": f"{called(value)} reaches the scan's last slice: it may go on beyond the scan",
    }[which] for value, which in item.ends]
    if item.weakest is not None and item.weakest[1] < UNLIKE:
        reasons.append(f"{called(item.weakest[0])} looks unlike the painting ({item.weakest[1]:.0%} alike)")
    return f"slice {item.slice}: {'; '.join(reasons) or 'least sure boundary'}"
