"""Encoding only where the structure is: the walk from the painted slices outward, and the engine using it."""

from __future__ import annotations

import numpy as np

from napari_fewshot.core.engine import segment
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.outward import OUTWARD_MARGIN_MM, expected_reach, walk_outward
from napari_fewshot.core.rules import KeepComponents, Pipeline, StopAtEnds

#: what the engine's default clean-up keeps of a block, a regrowth measured 5 slices back
KEPT = Pipeline((), walk=(KeepComponents("painted"), StopAtEnds(5))).kept


def _walk(present: slice, painted_slice: int, margin: int, batch: int, n: int = 40):
    """walk_outward over a structure that is a square on the slices ``present``; returns examined and the calls."""
    probability = np.zeros((n, 8, 8), np.float32)
    truth = np.zeros_like(probability, dtype=bool)
    truth[present, 2:6, 2:6] = True
    painted = np.zeros_like(truth)
    painted[painted_slice] = truth[painted_slice]
    calls = []

    def predict(slices: np.ndarray) -> None:
        calls.append(slices.tolist())
        probability[slices] = truth[slices]

    examined = walk_outward(predict, probability, painted, (painted_slice,), 0.5, KEPT, margin, batch)
    return examined, calls


def test_the_walk_stops_the_margin_past_each_end():
    examined, calls = _walk(slice(10, 20), 15, margin=3, batch=2)
    # the structure's ends are the empty slices 9 and 20: 3 more beyond each, nothing further
    np.testing.assert_array_equal(np.flatnonzero(examined), np.arange(9 - 3, 20 + 3 + 1))
    assert calls[0] == [15]
    assert all(len(c) <= 2 for c in calls[1:])
    assert sorted(z for c in calls for z in c) == list(range(6, 24))  # every slice predicted once


def test_the_walk_stops_at_the_volumes_edges():
    examined, _ = _walk(slice(0, 40), 20, margin=3, batch=4)
    assert examined.all()
    examined, _ = _walk(slice(0, 5), 2, margin=2, batch=4)
    np.testing.assert_array_equal(np.flatnonzero(examined), np.arange(0, 5 + 2 + 1))


def _slab(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A volume of ``n`` slices with a bright box on the middle third (slices 20-39), noise elsewhere."""
    rng = np.random.default_rng(3)
    image = (100 + rng.normal(0, 10, (n, 40, 40))).astype(np.float32)
    truth = np.zeros(image.shape, bool)
    truth[n // 3 : 2 * n // 3, 12:28, 10:26] = True
    image[truth] += 250
    return image, truth


def test_outward_encodes_the_structures_third_and_the_margin_and_agrees_with_every_slice():
    image, truth = _slab()
    support = np.zeros(image.shape, np.uint8)
    support[30] = truth[30]
    spacing = (2.0, 1.0, 1.0)
    outward = segment(image, support, spacing=spacing, encoder="tiny", cache=FeatureCache())
    every = segment(image, support, spacing=spacing, encoder="tiny", cache=FeatureCache(), every_slice=True)
    assert every.encoded_slices == 60 and len(every.examined[1]) == 60
    predicted = np.flatnonzero(every.labels.any(axis=(1, 2)))
    margin = int(np.ceil(OUTWARD_MARGIN_MM / spacing[0]))
    extent = predicted[-1] - predicted[0] + 1
    assert extent <= 22  # the structure's third, give or take a slice
    # the prediction's extent, its first empty slice on each side and the margin beyond
    assert outward.encoded_slices <= extent + 2 * (1 + margin) < 60
    np.testing.assert_array_equal(outward.labels, every.labels)
    examined = outward.examined[1]
    assert examined[0] == predicted[0] - 1 - margin and examined[-1] >= predicted[-1] + 1 + margin


def test_the_margin_is_in_millimetres():
    image, truth = _slab()
    support = np.zeros(image.shape, np.uint8)
    support[30] = truth[30]
    reach = {}
    for slice_mm in (1.0, 5.0):
        result = segment(image, support, spacing=(slice_mm, 1.0, 1.0), encoder="tiny", cache=FeatureCache())
        first_predicted = np.flatnonzero(result.labels.any(axis=(1, 2)))[0]
        reach[slice_mm] = (first_predicted - 1 - result.examined[1][0]) * slice_mm  # mm examined past the end
    assert reach[1.0] == OUTWARD_MARGIN_MM and OUTWARD_MARGIN_MM <= reach[5.0] < OUTWARD_MARGIN_MM + 5.0


def _sphere_walk(painted_slice: int, radius: float, reach: float, n: int = 80):
    """walk_outward over a ball of ``radius`` slices centred on slice 40 (1 mm voxels); returns examined and
    every plan it told."""
    z, y, x = np.ogrid[:n, :64, :64]
    truth = (z - 40) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 <= radius**2
    probability = np.zeros(truth.shape, np.float32)
    painted = np.zeros_like(truth)
    painted[painted_slice] = truth[painted_slice]
    plans = []

    def predict(slices: np.ndarray) -> None:
        probability[slices] = truth[slices]

    examined = walk_outward(predict, probability, painted, (painted_slice,), 0.5, KEPT, 3, 4, reach=reach,
                            plan=lambda first, last: plans.append((first, last)))
    return examined, plans


def test_the_plan_starts_from_the_paintings_size_and_ends_at_what_was_examined():
    reach = expected_reach(np.pi * 20**2, 1.0)
    examined, plans = _sphere_walk(40, radius=20, reach=reach)
    assert plans[0] == (40 - round(reach) - 3, 40 + round(reach) + 3)  # the reach and the margin
    assert plans[-1] == tuple(np.flatnonzero(examined)[[0, -1]]) == (40 - 21 - 3, 40 + 21 + 3)
    # once the ball narrows (8 slices out), the plan is within 30 % of the slices walked in the end
    assert all(abs((last - first + 1) / 49 - 1) < 0.3 for first, last in plans[2:])


def test_the_plan_follows_a_structure_narrowing_past_an_underestimated_reach():
    # painted on its largest slice, the ball's narrowing tells how far it goes, whatever was expected before
    _, plans = _sphere_walk(40, radius=20, reach=2.0)
    assert plans[0][0] == 40 - 2 - 3
    narrowed = plans[2]  # 8 slices below the painting the ball's area has fallen to 84 %
    assert abs(narrowed[0] - plans[-1][0]) <= 2


def test_expected_reach_is_in_slices():
    assert expected_reach(np.pi * 10**2, 1.0) == 2 * expected_reach(np.pi * 10**2, 2.0) == 15.0
