"""Corrections in rounds: a simulated user paints one more slice after each run, as interactive challenges score.

The user paints the structure's largest slice and runs; then, for each round, looks
at one more slice, paints the structure's truth there (or, when the structure is
not there, marks it absent) and runs again.  Which slice, three ways side by side
(:data:`CHOOSERS`):

- ``check``: the first entry of the tool's *Slices to check* for that structure
  (:meth:`~napari_fewshot.core.run.Segmentation.slices_to_check`); when it lists
  nothing the user stops there;
- ``oracle``: the slice where the prediction is most wrong (voxels);
- ``plan``: the fixed plan 1/2, 1/6, 5/6, 1/3, 2/3 of the structure's extent.

Each round is scored on the whole volume, with the seconds of its run (the
features cached after the first); :func:`area_under` sums up a curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..core.run import Segmentation
from .cases import Task
from .protocols import at_fractions

CHOOSERS = ("check", "oracle", "plan")
#: Rounds after the first run, unless told otherwise.
ROUNDS = 5
#: Where the ``plan`` chooser paints, as fractions of the extent, in order.
PLAN = (1 / 2, 1 / 6, 5 / 6, 1 / 3, 2 / 3)

#: ``segment(painting, absent)``: a run from a painting ``[Z, Y, X]`` (value 1) and the absent slices per value.
Segmenter = Callable[[np.ndarray, dict[int, list[int]]], Segmentation]


def choose(chooser: str, result: Segmentation, truth: np.ndarray, known: set[int]) -> int | None:
    """The next slice ``chooser`` looks at after ``result`` (label 1 the structure, ``truth`` ``[Z, Y, X]`` bool),
    none of the slices ``known`` (painted or marked absent); None when it has none left."""
    if chooser == "check":
        listed = [item.slice for item in result.slices_to_check(len(truth)) if item.slice not in known]
        return listed[0] if listed else None
    if chooser == "oracle":
        wrong = ((result.labels == 1) != truth).reshape(len(truth), -1).sum(axis=1)
        wrong[list(known)] = 0
        return int(wrong.argmax()) if wrong.max() > 0 else None
    if chooser == "plan":
        left = [z for z in at_fractions(truth, PLAN) if z not in known]
        return left[0] if left else None
    raise ValueError(f"unknown chooser '{chooser}'; choose one of {', '.join(CHOOSERS)}")


def simulate(segment: Segmenter, task: Task, chooser: str, rounds: int = ROUNDS,
             score: Callable[[np.ndarray], dict] | None = None) -> list[dict]:
    """The user's first run and ``rounds`` more, one slice chosen by ``chooser`` each; one dict per run: the
    round, the slice looked at and what was done there (``painted``, ``absent``, or ``stopped``), the scores of
    ``score(mask)`` and the run's seconds.  A user who stops keeps the last prediction for the rounds left."""
    truth = task.truth
    painting, absent = task.painting(), []
    known = set(task.support_slices)
    runs, result, stopped = [], None, False
    for round_ in range(rounds + 1):
        action, chosen = "first", None
        if result is not None:
            chosen = None if stopped else choose(chooser, result, truth, known)
            stopped = chosen is None
            if not stopped:
                known.add(chosen)
                if truth[chosen].any():
                    painting[chosen][truth[chosen]] = 1
                    action = "painted"
                else:
                    absent.append(chosen)
                    action = "absent"
        started = time.perf_counter()
        if not stopped:
            result = segment(painting, {1: sorted(absent)} if absent else {})
        seconds = time.perf_counter() - started if not stopped else 0.0
        mask = result.labels == 1
        runs.append({"round": round_, "slice": chosen, "action": "stopped" if stopped else action,
                     **(score(mask) if score else {}), "seconds": seconds})
    return runs


def area_under(dice: list[float]) -> float:
    """The area under a Dice-by-round curve (rounds 0 to N, trapezoids), over N: 1 for a perfect curve."""
    values = np.asarray(dice, dtype=float)
    return float(np.trapezoid(values) / max(len(values) - 1, 1)) if len(values) > 1 else float(values[0])
