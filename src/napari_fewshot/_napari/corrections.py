"""What a user changed in a prediction by hand, found by comparing it with what the widget wrote (no Qt here).

The widget keeps a copy of what it last wrote into each prediction layer; before
the next volume run, the slices that differ are the user's corrections: those
that still hold a structure join the support (each structure on them painted
there), and a structure erased from a slice is marked absent there, which a
label volume cannot say: later runs predict it neither there nor past there
(:func:`~napari_fewshot.core.support.limits`).
"""

from __future__ import annotations

import numpy as np

#: A structure marked absent by hand: (axis, slice index along it, label value).
Mark = tuple[int, int, int]


def corrected_slices(current: np.ndarray, written: np.ndarray, axis: int) -> tuple[list[int], set[Mark]]:
    """The slices along ``axis`` where ``current`` (a prediction layer's labels) differs from ``written`` (what
    the widget wrote there, same shape) and that hold a label (corrected), and the structures erased by hand: on
    each changed slice, those ``written`` holds and ``current`` no longer does."""
    n = written.shape[axis]
    now, before = (np.moveaxis(labels, axis, 0).reshape(n, -1) for labels in (current, written))
    changed = (now != before).any(axis=1)
    holds = now.any(axis=1)
    erased = {(axis, int(z), int(value)) for z in np.flatnonzero(changed)
              for value in np.setdiff1d(before[z], now[z]) if value != 0}
    return np.flatnonzero(changed & holds).tolist(), erased


def absent_slices(marks: set[Mark], axis: int, support: np.ndarray) -> dict[int, list[int]]:
    """Per structure painted in ``support`` (labels, slices along ``axis``), the slices it is marked absent on
    (``marks``), unless it was painted there since."""
    n = support.shape[axis]
    painting = np.moveaxis(support, axis, 0).reshape(n, -1)
    absent: dict[int, list[int]] = {}
    for a, z, value in sorted(marks):
        if a == axis and (painting == value).any() and not (painting[z] == value).any():
            absent.setdefault(value, []).append(z)
    return absent
