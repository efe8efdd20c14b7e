"""Finding a user's corrections in a prediction, without Qt."""

import numpy as np

from napari_fewshot._napari.corrections import absent_slices, corrected_slices


def test_changed_slices_are_corrected_when_they_hold_a_label_and_erased_structures_marked():
    written = np.zeros((6, 4, 5), np.uint8)
    written[1:5, 1:3, 1:4] = 1
    written[3, 3, :] = 2
    current = written.copy()
    current[2, 0, 0] = 2  # a voxel added
    current[4] = 0  # the slice cleared
    current[0, 3, 3] = 1  # a structure painted on an empty slice
    current[3, 3, :] = 0  # structure 2 erased from slice 3, structure 1 kept there
    corrected, erased = corrected_slices(current, written, axis=0)
    assert corrected == [0, 2, 3] and erased == {(0, 4, 1), (0, 3, 2)}
    # along another axis: columns 0 (added voxel) and 3 (the cleared slice's voxels and the new one)
    assert corrected_slices(current, written, axis=2)[0] == [0, 1, 2, 3]


def test_absent_marks_hold_for_painted_structures_unless_painted_there_since():
    support = np.zeros((24, 4, 4), np.uint8)
    support[12, 1, 1], support[19, 2, 2], support[10, 0, 0] = 1, 1, 2
    marks = {(0, 4, 1), (0, 19, 1), (0, 19, 2), (1, 3, 1), (0, 7, 3)}
    assert absent_slices(marks, 0, support) == {1: [4], 2: [19]}  # 1 painted on 19 since; 3 painted nowhere
    assert absent_slices(marks, 1, support) == {1: [3]}
