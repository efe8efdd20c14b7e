"""Per-slice confidence: how sure each slice is, and how present each structure is."""

import numpy as np
import pytest

from napari_fewshot.core.confidence import (
    check_reason, similarity_levels, slice_confidence, slices_to_check, structure_presence,
)


def test_sure_voxels_share_and_the_slices_to_check_first():
    probability = np.zeros((4, 2, 2), np.float32)
    probability[1] = [[0.9, 0.6], [0.6, 0.6]]  # 1 sure of 4 seen
    probability[2] = [[0.9, 0.9], [0.9, 0.4]]  # 3 sure of 4 seen
    probability[3] = [[0.9, 0.0], [0.0, 0.0]]
    confidence = slice_confidence([probability])
    assert confidence.tolist() == pytest.approx([1.0, 0.25, 0.75, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        slice_confidence([])


def test_presence_places_the_prediction_between_the_painted_slices_levels():
    painted = np.zeros((1, 4, 4), bool)
    painted[0, :2] = True
    attention = np.where(painted, 0.8, 0.2).astype(np.float32)
    levels = similarity_levels(attention, painted)
    assert levels.shape == (1, 2) and levels[0].tolist() == pytest.approx([0.8, 0.2])

    query = np.full((4, 4, 4), 0.2, np.float32)
    predicted = np.zeros(query.shape, bool)
    predicted[:3, :2] = True
    query[0, :2] = 0.8  # as alike as the painting
    query[1, :2] = 0.5  # half way
    query[2, :2] = 0.1  # less alike than the painted slice's background
    presence = structure_presence(query, predicted, np.repeat(levels, 4, axis=0))
    assert presence.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])  # slice 3: nothing predicted


def test_slices_to_check_go_by_expected_error_and_list_where_structures_end():
    sure = np.array([1.0, 0.9, 0.5, 0.9, 0.8, 0.95, 1.0, 1.0])
    areas = {1: np.array([0, 10, 40, 30, 20, 5, 0, 0]), 2: np.array([50, 40, 30, 10, 0, 0, 0, 0])}
    presence = {1: np.array([0, 0.9, 0.9, 0.1, 0.7, 0.6, 0, 0]), 2: np.array([0.8, 0.8, 0.8, 0.8, 0, 0, 0, 0])}
    listed = slices_to_check(sure, presence, areas, known={1: [2], 2: [2]})
    # expected error, area times slices from the painting: 0: 100 (2), 1: 40 (2), 4: 40 (1), 3: 30 (1), 5: 15 (1)
    assert [(c.slice, c.structure, c.far) for c in listed] == [(0, 2, 2), (1, 2, 1), (4, 1, 2), (3, 1, 1), (5, 1, 3)]
    assert [c.ends for c in listed] == [((2, "scan start"),), ((1, "first"),), (), ((2, "last"),), ((1, "last"),)]
    assert listed[3].weakest == (1, 0.1)  # on slice 3 structure 1 is the least present
    # fewer places: where structures end stays listed, the rest gives way
    assert [c.slice for c in slices_to_check(sure, presence, areas, known={1: [2], 2: [2]}, count=4)] == [0, 1, 3, 5]
    names = {1: "liver", 2: "spleen"}
    assert [check_reason(c, names) for c in listed] == [
        "slice 0: spleen reaches the scan's first slice: it may go on beyond the scan",
        "slice 1: liver begins here: is the slice before empty?",
        "slice 4: liver is 2 slices from its nearest painted slice",
        "slice 3: spleen ends here: is the slice after empty?; liver looks unlike the painting (10% alike)",
        "slice 5: liver ends here: is the slice after empty?",
    ]


def test_a_slice_known_for_one_structure_is_still_listed_for_another():
    sure = np.ones(6)
    areas = {1: np.array([0, 10, 10, 10, 0, 0]), 2: np.array([0, 0, 10, 10, 10, 0])}
    presence = {1: np.full(6, 0.9), 2: np.array([0, 0, 0.2, 0.9, 0.9, 0])}
    listed = slices_to_check(sure, presence, areas, known={1: [2], 2: [4]})  # 1 painted on 2, 2 painted on 4
    assert {c.slice for c in listed} == {1, 2, 3}  # 4 is known for 2 and holds nothing of 1
    two = next(c for c in listed if c.slice == 2)
    assert two.structure == 2 and two.weakest == (2, 0.2) and two.ends == ((2, "first"),)
