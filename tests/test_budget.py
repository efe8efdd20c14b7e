"""benchmarks/budget.py: a prediction's Dice, as it is and with each of its errors mended from the truth."""

import numpy as np
import pytest
from budget import dice_budget, dice_by_distance


def masks() -> tuple[np.ndarray, np.ndarray]:
    """A structure on slices 2-7 (4 voxels each); its prediction on slices 0-5, one column too wide on slice 4."""
    truth = np.zeros((10, 4, 4), dtype=bool)
    truth[2:8, 1:3, 1:3] = True
    prediction = np.zeros_like(truth)
    prediction[0:6, 1:3, 1:3] = True
    prediction[4, 1:3, 0] = True
    return prediction, truth


def test_each_error_is_mended_alone_and_counted():
    prediction, truth = masks()
    budget = dice_budget(prediction, truth, painted_slices=(3,))
    # 26 voxels predicted, 24 true, 16 shared
    assert budget.as_predicted == pytest.approx(32 / 50)
    assert budget.past_emptied == pytest.approx(32 / 42)  # slices 0 and 1 emptied
    assert budget.missed_filled == pytest.approx(48 / 58)  # slices 6 and 7 given the truth
    assert budget.extent_right == pytest.approx(48 / 50)  # both: only slice 4's extra column is left
    assert budget.boundaries_right == pytest.approx(32 / 48)  # slices 2-5 given the truth
    assert budget.on_found == pytest.approx(24 / 26)  # slices 2, 4 and 5; the painted slice 3 left out
    assert (budget.slices, budget.past, budget.missed) == (6, 2, 2)


def test_a_prediction_that_misses_the_structure_loses_all_of_it_to_its_range():
    _, truth = masks()
    budget = dice_budget(np.zeros_like(truth), truth)
    assert budget.as_predicted == 0.0 and budget.missed_filled == budget.extent_right == 1.0
    assert budget.boundaries_right == 0.0 and budget.missed == budget.slices == 6


def test_slices_are_scored_by_their_distance_to_the_nearest_painting_where_every_mask_holds_the_structure():
    prediction, truth = masks()
    copy = np.repeat(truth[3:4], 10, axis=0)  # the painting on slice 3 copied everywhere
    scores = dice_by_distance([prediction, copy], truth, painted_slices=(3,))
    # slices 2-5 hold all three; slices 6 and 7 lack the prediction; slice 3 is painted
    assert scores == {1: [(1.0, 1.0), (pytest.approx(8 / 10), 1.0)], 2: [(1.0, 1.0)]}
