"""Where a prediction loses its Dice: slices past the structure, slices missed, and boundaries.

A whole-volume Dice below 1 mixes three errors:

- the prediction runs on past the structure's ends, onto slices where it is not;
- it misses slices where the structure is;
- on the slices where both are, it draws another boundary.

:func:`dice_budget` scores the prediction as it is, then with each error mended
from the truth: what each error costs, and what the best possible rule for the
slice range or for the boundaries alone could reach.  :func:`dice_by_distance`
says how a boundary drawn from the paintings holds up away from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_fewshot.evaluation.metrics import dice


@dataclass(frozen=True)
class DiceBudget:
    """Whole-volume Dice of one prediction, as it is and with its errors mended.

    as_predicted : the prediction as it is.
    past_emptied : with the slices it predicts outside the structure emptied.
    missed_filled : with the slices it misses given the truth's mask.
    extent_right : with both: the slice range right, the boundaries as drawn.
    boundaries_right : with the truth's mask on every slice both hold: the boundaries right, the range as predicted.
    on_found : Dice over the slices both hold, painted slices left out: how well it draws where it finds
        the structure (1 when there are none).
    slices, past, missed : the slices the structure is on, those predicted outside it, those it misses.
    """

    as_predicted: float
    past_emptied: float
    missed_filled: float
    extent_right: float
    boundaries_right: float
    on_found: float
    slices: int
    past: int
    missed: int


def dice_budget(prediction: np.ndarray, truth: np.ndarray, painted_slices: tuple[int, ...] = ()) -> DiceBudget:
    """The :class:`DiceBudget` of ``prediction`` against ``truth`` (both ``[Z, Y, X]`` bool, slices along Z).

    painted_slices : slices whose masks the user gave; left out of ``on_found``.
    """
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    predicted_on, truth_on = prediction.any(axis=(1, 2)), truth.any(axis=(1, 2))
    past, missed, both = predicted_on & ~truth_on, truth_on & ~predicted_on, predicted_on & truth_on
    found = both.copy()
    found[list(painted_slices)] = False
    return DiceBudget(
        as_predicted=dice(prediction, truth),
        past_emptied=dice(_mended(prediction, truth, past), truth),
        missed_filled=dice(_mended(prediction, truth, missed), truth),
        extent_right=dice(_mended(prediction, truth, past | missed), truth),
        boundaries_right=dice(_mended(prediction, truth, both), truth),
        on_found=dice(prediction[found], truth[found]),
        slices=int(truth_on.sum()), past=int(past.sum()), missed=int(missed.sum()),
    )


def _mended(prediction: np.ndarray, truth: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """``prediction`` with the ``slices`` (``[Z]`` bool) taken from ``truth``."""
    mended = prediction.copy()
    mended[slices] = truth[slices]
    return mended


def dice_by_distance(
    predictions: Sequence[np.ndarray], truth: np.ndarray, painted_slices: tuple[int, ...],
) -> dict[int, list[tuple[float, ...]]]:
    """Per distance in slices to the nearest painted slice, the slice Dice of each of ``predictions``, on every
    slice at that distance where ``truth`` and all of them hold the structure (all ``[Z, Y, X]`` bool).

    Give the paintings copied onto every slice (:func:`~napari_fewshot.evaluation.propagation.propagate` with
    ``copy_step``) as one prediction to see what copying gives on the same slices.
    """
    masks = [np.asarray(mask, bool) for mask in (*predictions, truth)]
    everywhere = np.logical_and.reduce([mask.any(axis=(1, 2)) for mask in masks])
    painted = np.array(sorted(set(painted_slices)))
    scores: dict[int, list[tuple[float, ...]]] = {}
    for z in np.flatnonzero(everywhere):
        distance = int(np.abs(painted - z).min())
        if distance:
            scores.setdefault(distance, []).append(tuple(dice(mask[z], masks[-1][z]) for mask in masks[:-1]))
    return scores
