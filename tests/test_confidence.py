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


def test_slices_to_check_list_where_structures_end_then_the_weakest():
    sure = np.array([1.0, 0.9, 0.5, 0.9, 0.8, 0.95, 1.0, 1.0])
    held = {1: np.array([0, 1, 1, 1, 1, 1, 0, 0], bool), 2: np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)}
    presence = {1: np.array([0, 0.9, 0.9, 0.1, 0.7, 0.6, 0, 0]), 2: np.array([0.8, 0.8, 0.8, 0.8, 0, 0, 0, 0])}
    listed = slices_to_check(sure, presence, held, known={1: [2], 2: [2]})
    # structure 1 begins on 1 and ends on 5; structure 2 reaches the volume's first slice and ends on 3
    assert [(c.slice, c.ends) for c in listed[:4]] == [
        (0, ((2, "scan start"),)), (1, ((1, "first"),)), (3, ((2, "last"),)), (5, ((1, "last"),)),
    ]
    assert listed[2].weakest == (1, 0.1)  # on slice 3 structure 1 is the least present
    assert [c.slice for c in listed[4:]] == [4]  # min(sure, presence) 0.7; slice 2 is painted
    assert len(slices_to_check(sure, presence, held, known={1: [2], 2: [2]}, count=2)) == 2
    assert [c.structure for c in listed] == [2, 1, 2, 1, 1]
    names = {1: "liver", 2: "spleen"}
    assert [check_reason(c, names) for c in listed] == [
        "slice 0: spleen reaches the scan's first slice: it may go on beyond the scan",
        "slice 1: liver begins here: is the slice before empty?",
        "slice 3: spleen ends here: is the slice after empty?; liver looks unlike the painting (10% alike)",
        "slice 5: liver ends here: is the slice after empty?",
        "slice 4: least sure boundary",
    ]


def test_a_slice_known_for_one_structure_is_still_listed_for_another():
    sure = np.ones(6)
    held = {1: np.array([0, 1, 1, 1, 0, 0], bool), 2: np.array([0, 0, 1, 1, 1, 0], bool)}
    presence = {1: np.full(6, 0.9), 2: np.array([0, 0, 0.2, 0.9, 0.9, 0])}
    # structure 2 painted on 4 (its last slice: known), structure 1 marked absent on... nothing; 1 painted on 2
    listed = slices_to_check(sure, presence, held, known={1: [2], 2: [4]})
    assert [(c.slice, c.ends) for c in listed[:3]] == [(1, ((1, "first"),)), (2, ((2, "first"),)), (3, ((1, "last"),))]
    assert listed[1].weakest == (2, 0.2)  # painted for 1, so only 2 is weighed on slice 2
    assert 4 not in [c.slice for c in listed]  # 2 is known there and 1 is not predicted
