"""Predicting a structure only where it is: from its painted slices outward until it has ended.

A structure painted on one slice of a 300-slice scan may span 40 of them: the
slices far beyond its ends need neither encoding nor a prediction.
:func:`walk_outward` asks for predictions a batch of slices at a time, first
between the outermost painted slices, then away from them in each direction,
and after each batch decides, with the rules the engine's post-processing keeps
(the components touching the painting, :func:`~napari_fewshot.core.postprocess.stop_at_ends`),
whether the structure has ended on that side; once it has, the slices up to
``margin`` past its end are examined and the walk turns back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .postprocess import connected_to, stop_at_ends

#: Slices are examined this far (mm) past where a structure ends.
OUTWARD_MARGIN_MM = 10.0


def walk_outward(
    predict: Callable[[np.ndarray], None],
    probability: np.ndarray,
    painted: np.ndarray,
    painted_slices: tuple[int, ...],
    threshold: float,
    ends: bool,
    margin: int,
    batch: int,
) -> np.ndarray:
    """Predict one structure from its painted slices outward; returns the slices examined, ``[Z]`` bool.

    predict : ``predict(slices)`` fills ``probability`` on those slice indices.
    probability : ``[Z, Y, X]`` float, the structure's probability (filled by ``predict``).
    painted : ``[Z, Y, X]`` bool, where it is painted (on ``painted_slices``).
    threshold : above it a voxel belongs to the structure.
    ends : stop where :func:`stop_at_ends` ends it; otherwise where its components
        touching the painting leave a slice empty.
    margin : slices examined past the end (the first slice without it) on each side; a
        batch that found the end may have gone up to ``batch - 1`` slices further.
    batch : slices per ``predict``.
    """
    n = len(probability)
    low, high = min(painted_slices), max(painted_slices)
    examined = np.zeros(n, dtype=bool)
    examined[low : high + 1] = True
    predict(np.arange(low, high + 1))
    for step in (-1, 1):
        edge, size = (low if step < 0 else high), batch
        while 0 <= edge + step < n and size > 0:
            nxt = np.arange(edge + step, edge + step * (size + 1), step)
            nxt = nxt[(nxt >= 0) & (nxt < n)]
            predict(np.sort(nxt))
            examined[nxt] = True
            edge = int(nxt[-1])
            end = _end(probability, painted, painted_slices, examined, threshold, ends, step)
            if end is not None:  # only the margin is left to examine
                size = min(batch, margin - abs(edge - end))
    return examined


def _end(
    probability: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...], examined: np.ndarray,
    threshold: float, ends: bool, step: int,
) -> int | None:
    """The first slice past the outermost painted slice in direction ``step`` where the structure, as the
    post-processing keeps it within the ``examined`` slices, is empty; None while it goes on."""
    first, last = np.flatnonzero(examined)[[0, -1]]
    block = probability[first : last + 1] > threshold
    painted_block = painted[first : last + 1]
    relative = tuple(z - first for z in painted_slices)
    block[list(relative)] = painted_block[list(relative)]
    kept = connected_to(block, painted_block)
    if ends:
        kept = stop_at_ends(kept, relative)
    present = kept.reshape(len(kept), -1).any(axis=1)
    start = max(relative) if step > 0 else min(relative)
    beyond = np.arange(start + step, len(kept) if step > 0 else -1, step)
    empty = beyond[~present[beyond]]
    return None if empty.size == 0 else int(empty[0]) + int(first)
