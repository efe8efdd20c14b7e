"""Which slices a benchmark paints and which it scores (METHOD.md, "Evaluation protocols").

Masks are boolean ``[Z, Y, X]`` with slices along the first axis.

- ``one-largest``: one painted slice, the structure's slice of largest area;
- ``one-middle``: one painted slice, the middle of the structure's extent;
- ``three``: three painted slices, at 1/6, 1/2 and 5/6 of the extent;
- ``cross`` (the paper's EP1): the support comes from another volume, at 1/6, 1/2
  and 5/6 of its extent; the query's own extent is cut in thirds, each third is
  segmented with its support slice, and only the extent is scored;
- ``multi``, ``multi-three``: as a clinician paints, every structure of the scan
  painted into one support, each on its own slices (those of ``one-largest``,
  ``three``), segmented in one run; each structure is scored as in those protocols;
- ``rounds``: corrections in rounds (:mod:`~napari_fewshot.evaluation.rounds`): the
  structure painted on its largest slice, then one more slice painted (or marked
  absent) per round, chosen as a user would.

The one-volume protocols score the whole volume (EP2) and, beside it, the
slices of the structure's extent.
"""

from __future__ import annotations

import numpy as np

PROTOCOLS = ("one-largest", "one-middle", "three", "cross", "multi", "multi-three", "rounds")
#: The protocols that paint every structure of a scan into one support, each with the protocol it paints as.
TOGETHER = {"multi": "one-largest", "multi-three": "three"}
#: Where the ``three`` and ``cross`` protocols paint, as fractions of the extent.
THIRDS = (1 / 6, 1 / 2, 5 / 6)


def areas(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` on each slice, ``[Z]``."""
    return np.asarray(mask, bool).reshape(len(mask), -1).sum(axis=1)


def extent(mask: np.ndarray) -> tuple[int, int]:
    """The first and last slice holding the structure; ``ValueError`` when it is empty."""
    present = np.flatnonzero(areas(mask))
    if present.size == 0:
        raise ValueError("the structure is empty: no slice holds it")
    return int(present[0]), int(present[-1])


def _nearest_present(mask: np.ndarray, index: int) -> int:
    """``index``, or the nearest slice that holds the structure (a structure may have gaps)."""
    present = np.flatnonzero(areas(mask))
    return int(present[np.argmin(np.abs(present - index))])


def at_fractions(mask: np.ndarray, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """The slices at ``fractions`` of the structure's extent (each one holding it)."""
    first, last = extent(mask)
    length = last - first + 1
    return tuple(_nearest_present(mask, first + min(int(f * length), length - 1)) for f in fractions)


def support_slices(mask: np.ndarray, protocol: str) -> tuple[int, ...]:
    """The slices of ``mask`` that ``protocol`` paints (sorted, distinct)."""
    protocol = TOGETHER.get(protocol, protocol)
    if protocol in ("one-largest", "rounds"):
        slices = (int(areas(mask).argmax()),)
    elif protocol == "one-middle":
        slices = at_fractions(mask, (1 / 2,))
    elif protocol in ("three", "cross"):
        slices = at_fractions(mask, THIRDS)
    else:
        raise ValueError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    return tuple(sorted(set(slices)))


def painted(mask: np.ndarray, slices: tuple[int, ...], value: int = 1,
            support: np.ndarray | None = None) -> np.ndarray:
    """A support label volume: ``value`` where ``mask`` is on ``slices``, 0 elsewhere (uint8; painted into
    ``support`` when given)."""
    support = np.zeros(mask.shape, dtype=np.uint8) if support is None else support
    for index in slices:
        support[index][np.asarray(mask[index], bool)] = value
    return support


def query_thirds(mask: np.ndarray) -> list[np.ndarray]:
    """The query's extent cut in three runs of slices (EP1), the first third first.

    Each slice goes to the third its position falls in, so short extents still
    give every slice a third (some thirds may be empty for 1-2 slice extents).
    """
    first, last = extent(mask)
    slices = np.arange(first, last + 1)
    third = np.minimum(((slices - first) * 3) // len(slices), 2)
    return [slices[third == t] for t in range(3)]
