"""Boundaries that follow the anatomy from slice to slice: the painting carried by registration.

The engine decides *where* and *whether* a structure is on each slice; its
boundaries come from a coarse feature grid (the prototypes) or from a box
prompt (the decoder), and neither looks at the neighbouring slice.  Carrying the
painting from slice to slice by deformable registration
(:class:`~napari_fewshot.core.registration.SliceRegistration`) draws boundaries
that follow the anatomy, but registration alone never knows where a structure
ends and drifts onto neighbours that look alike.  :func:`follow_anatomy` takes
the best of both, slice by slice:

- from each painted slice outward (each slice from its nearest painted slice, as
  far as the engine finds the structure without a gap), the painting is carried
  one slice at a time by registration, until it vanishes;
- on each slice the structure is the carried mask inside the engine's mask grown
  by ``grow`` pixels: registration draws the boundary, the engine bounds it;
- where the two do not meet, the slice is left empty: the engine has found a
  look-alike, or registration has lost the structure, and either way the two
  no longer agree where it is (the engine's clean-up then drops what lies past
  such a slice, cut off from the painting);
- where the carried mask vanishes, carrying stops and the engine's masks stay.

How the rule was chosen, on the broad development benchmark (84 structures, one
and three painted slices, mean whole-volume Dice; ``docs/benchmarks.md``): from
one painted slice, the engine alone 0.463; registration's mask wherever the
engine has the structure 0.542; bounded by the engine's mask grown by a pixel
0.566 (grown by 0 to 4 pixels: 0.568 to 0.555), and 0.577 with the components cut
off from the painting dropped (the rule here); keeping the engine's mask where the
two do not meet 0.544; carrying on from the bounded mask instead of registration's
own 0.550; trusting registration only where it agrees with the engine (slice Dice
at least 0.3 to 0.7) 0.498 to 0.474, or where the carried mask's mean intensity
stays within 0.5 to 2 standard deviations of the painting's 0.485 to 0.516.  From
three painted slices: 0.666, 0.781, 0.773, 0.773, 0.772, 0.769, 0.742 to 0.694.
Bounding keeps the brain tissue, which registration alone loses (one slice: 0.674,
0.593, 0.684).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: ``carry(mask, source, target)``: a slice mask ``[H, W]`` on slice ``source`` carried onto slice ``target``.
Carry = Callable[[np.ndarray, int, int], np.ndarray]


def follow_anatomy(
    mask: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...], carry: Carry, grow: int = 1,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool of one structure with its boundaries carried from the paintings (a new array).

    painted : ``[Z, Y, X]`` bool, the painting (on ``painted_slices``); painted slices keep ``mask``'s.
    carry : carries a slice mask to a neighbouring slice (a
        :class:`~napari_fewshot.core.registration.SliceRegistration`).
    grow : pixels the engine's mask is grown by in each slice before it bounds the carried one.
    advance : told ``1`` after every slice carried (progress).
    """
    followed = mask.copy()
    present = mask.any(axis=(1, 2))
    order = sorted(set(painted_slices))
    footprint = np.ones((2 * grow + 1, 2 * grow + 1), dtype=bool) if grow > 0 else None
    for i, seed in enumerate(order):
        lowest = (order[i - 1] + seed) // 2 + 1 if i > 0 else 0
        highest = (seed + order[i + 1]) // 2 if i + 1 < len(order) else len(mask) - 1
        for targets in (range(seed + 1, highest + 1), range(seed - 1, lowest - 1, -1)):
            carried, source = painted[seed], seed
            for target in targets:
                if not present[target]:
                    break
                carried = carry(carried, source, target)
                if advance is not None:
                    advance(1)
                if not carried.any():
                    break
                bound = mask[target] if footprint is None else ndimage.binary_dilation(mask[target], footprint)
                followed[target] = carried & bound
                source = target
    return followed
