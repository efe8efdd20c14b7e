"""Finding a user's corrections in a prediction, without Qt."""

import numpy as np

from napari_fewshot._napari.corrections import corrected_slices, kept_empty


def test_changed_slices_are_corrected_when_they_hold_a_label_and_cleared_when_emptied():
    written = np.zeros((6, 4, 5), np.uint8)
    written[1:5, 1:3, 1:4] = 1
    current = written.copy()
    current[2, 0, 0] = 2  # a voxel added
    current[4] = 0  # the slice cleared
    current[0, 3, 3] = 1  # a structure painted on an empty slice
    assert corrected_slices(current, written, axis=0) == ([0, 2], [4])
    # along another axis: columns 0 (added voxel) and 3 (the cleared slice's voxels and the new one)
    assert corrected_slices(current, written, axis=2) == ([0, 1, 2, 3], [])


def test_slices_cleared_by_hand_stay_empty_unless_painted_since():
    cleared = {(0, 4), (0, 19), (1, 7)}
    assert kept_empty(cleared, 0, painted={19}) == [4]
    assert kept_empty(cleared, 1, painted=set()) == [7]
