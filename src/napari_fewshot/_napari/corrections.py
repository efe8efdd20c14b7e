"""What a user changed in a prediction by hand, found by comparing it with what the widget wrote (no Qt here).

The widget keeps a copy of what it last wrote into each prediction layer; before
the next volume run, the slices that differ are the user's corrections: those
that still hold a structure join the support, those cleared by hand stay empty
in later runs (a label volume cannot say "absent" as a support).
"""

from __future__ import annotations

import numpy as np


def corrected_slices(current: np.ndarray, written: np.ndarray, axis: int) -> tuple[list[int], list[int]]:
    """The slices along ``axis`` where ``current`` (a prediction layer's labels) differs from ``written``
    (what the widget wrote there, same shape): those holding a label (corrected) and those left empty (cleared)."""
    n = written.shape[axis]
    changed = np.moveaxis(current != written, axis, 0).reshape(n, -1).any(axis=1)
    holds = np.moveaxis(current, axis, 0).reshape(n, -1).any(axis=1)
    return np.flatnonzero(changed & holds).tolist(), np.flatnonzero(changed & ~holds).tolist()


def kept_empty(cleared: set[tuple[int, int]], axis: int, painted: set[int]) -> list[int]:
    """The slices along ``axis`` a run leaves empty: those cleared by hand (``cleared``: (axis, slice) pairs),
    unless painted since."""
    return sorted(z for a, z in cleared if a == axis and z not in painted)
