"""Several painted slices: a structure held to the shape between its paintings and stopped past the outermost."""

import numpy as np

from conftest import dice
from napari_fewshot.core.between import _narrowed_reach, hold_between, hold_past, signed_distance


def _cone(n: int = 24) -> np.ndarray:
    """A cone along z ``[n, 64, 64]``: its radius grows half a pixel per slice and its centre moves."""
    z, y, x = np.mgrid[:n, :64, :64]
    return (y - 20) ** 2 + (x - 12 - 0.5 * z) ** 2 < (3 + 0.5 * z) ** 2


def test_signed_distance_is_negative_inside_and_in_mm():
    mask = np.zeros((5, 9), bool)
    mask[:, :3] = True
    distance = signed_distance(mask, (1.0, 2.0))
    assert distance[2, 0] < 0 < distance[2, 8] and distance[2, 8] - distance[2, 4] == 8.0  # columns 2 mm apart
    assert np.isinf(signed_distance(np.zeros((3, 3), bool), (1.0, 1.0))).all()


def test_between_paintings_a_look_alike_goes_and_an_empty_slice_takes_the_interpolated_shape():
    cone = _cone()
    painted = np.zeros_like(cone)
    painted[[4, 14]] = cone[[4, 14]]
    predicted = cone.copy()
    predicted[9, 50:58, 50:58] = True  # a look-alike far (over 30 mm) from the shape between the paintings
    predicted[11] = False  # a slice the prediction lost
    held = hold_between(predicted, painted, (4, 14), (3.0, 1.0, 1.0))
    assert not held[9, 50:58, 50:58].any() and dice(held[9], cone[9]) == 1.0
    assert dice(held[11], cone[11]) > 0.85
    assert (held[:5] == cone[:5]).all() and (held[14:] == cone[14:]).all()  # nothing changes past the paintings


def test_past_the_outermost_painting_at_most_one_gap_and_one_painting_changes_nothing():
    cone = _cone()
    painted = np.zeros_like(cone)
    painted[[12, 16]] = cone[[12, 16]]
    held = hold_past(cone, painted, (12, 16))  # it narrows towards 12: held below 12, not past 16 where it widens
    # areas 249 and 373 pixels: falling so, the area is 0 nine slices below 12 (one gap is 4)
    assert not held[:3].any() and (held[3:] == cone[3:]).all()
    assert _narrowed_reach(25, 100, 8) == 8  # narrowing sharply: one gap
    assert _narrowed_reach(60, 100, 8) == 12 and _narrowed_reach(90, 100, 8) is None
    assert (hold_past(cone, painted, (16,)) == cone).all()
    assert (hold_between(cone, painted, (16,), (3.0, 1.0, 1.0)) == cone).all()


def test_two_paintings_alike_in_size_say_nothing_of_the_ends():
    tube = np.zeros((24, 20, 20), bool)
    tube[2:22, 5:15, 5:15] = True
    painted = np.zeros_like(tube)
    painted[[10, 12]] = tube[[10, 12]]  # a correction painted beside the first painting
    assert (hold_past(tube, painted, (10, 12)) == tube).all()
