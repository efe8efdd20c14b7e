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
- where the carried mask vanishes, carrying stops and the engine's masks stay;
- between the outermost painted slices the user has said, by painting both ends,
  that the structure runs from one to the other: there the carried mask is taken
  as it is, on every slice, and the engine neither bounds nor stops it;
- within ``near`` slices past the outermost painted slices, registration has not
  drifted far yet: the carried mask is not bounded there (the engine still says
  where the structure ends).

How the rule was chosen (``benchmarks/boundary_rules.py`` on the broad development
benchmark, 84 structures; mean whole-volume Dice from one / three painted slices):
the engine alone 0.463 / 0.666; registration's mask wherever the engine has the
structure 0.542 / 0.781; registration's only where it agrees with the engine's
(slice Dice at least 0.3 to 0.7) 0.498 to 0.474 / 0.742 to 0.694; bounded by the
engine's mask grown by a pixel, the engine's where they miss 0.544 / 0.772, empty
where they miss 0.566 / 0.773, and with what that cuts off from the painting
dropped 0.577 / 0.773.  Bounding keeps the brain tissue, which registration alone
loses (one slice: 0.674, 0.593, 0.684).  Between the outermost painted slices, the
carried mask taken as it is raises three painted slices to 0.794 (every kind but
brain tissue gains; brain tissue 0.759 to 0.757): there the engine's bound only
cut the structure short.  Not bounding it within 3, 6, 9, 15 or 30 mm past the
outermost painted slices too gives 0.582, 0.585, 0.584, 0.582, 0.572 from one
painted slice (bowel 0.518 to 0.538, 0.552, 0.562, 0.562, 0.562) and 0.795, 0.795,
0.794, 0.791, 0.788 from three: the engine uses 6 mm (the rule here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from .support import walks_from_painted

#: Around a structure's mask, the mm of each slice that registration sees when it carries the boundary, and the
#: most pixels along a side it registers at full resolution (a wider box is binned to fit).
FOLLOW_MARGIN_MM, FOLLOW_MAX_SIDE = 20.0, 128
#: Within this many mm past the outermost painted slices the carried boundary is not bounded by the engine's mask.
FOLLOW_NEAR_MM = 6.0
#: Demons iterations per carried slice.  20 carry one step as well (``benchmarks/carry_steps.py``: Dice 0.857 against
#: 0.858, 7 ms a step against 16) but lose over a walk: the broad benchmark's mean drops 0.007 (one painted slice)
#: and 0.009 (three), ribs by up to 0.2.  With the field smoothed less (``registration.SMOOTHING``), 30, 50 and
#: 100 carry the paintings onto the slices between three of them at 0.795, 0.797 and 0.800 mean slice Dice.
FOLLOW_ITERATIONS = 50

#: ``carry(mask, source, target)``: a slice mask ``[H, W]`` on slice ``source`` carried onto slice ``target``.
Carry = Callable[[np.ndarray, int, int], np.ndarray]


def follow_anatomy(
    mask: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...], carry: Carry, grow: int = 1,
    near: int = 0, advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``mask`` ``[Z, Y, X]`` bool of one structure with its boundaries carried from the paintings (a new array).

    painted : ``[Z, Y, X]`` bool, the painting (on ``painted_slices``); painted slices keep ``mask``'s, and
        between the outermost of them the carried mask is taken as it is.
    carry : carries a slice mask to a neighbouring slice (a
        :class:`~napari_fewshot.core.registration.SliceRegistration`).
    grow : pixels the engine's mask is grown by in each slice before it bounds the carried one.
    near : slices past the outermost painted slices where the carried mask is not bounded.
    advance : told ``1`` after every slice carried (progress).
    """
    followed = mask.copy()
    present = mask.any(axis=(1, 2))
    low, high = min(painted_slices), max(painted_slices)
    footprint = np.ones((2 * grow + 1, 2 * grow + 1), dtype=bool) if grow > 0 else None
    for seed, targets in walks_from_painted(painted_slices, len(mask)):
        carried, source = painted[seed], seed
        for target in targets:
            between = low < target < high
            if not (between or present[target]):
                break
            carried = carry(carried, source, target)
            if advance is not None:
                advance(1)
            if not carried.any():
                break
            if between or min(abs(target - low), abs(target - high)) <= near:
                followed[target] = carried
            else:
                bound = mask[target] if footprint is None else ndimage.binary_dilation(mask[target], footprint)
                followed[target] = carried & bound
            source = target
    return followed
