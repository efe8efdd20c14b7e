"""The rules after prediction as a pipeline: built from the options, applied per structure, asked by the walk."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fewshot.core.options import SegmentOptions, resolve
from napari_fewshot.core.rules import (
    FillHoles, HoldBetween, HoldPast, IntensityStop, KeepComponents, KeepToLimits, Pipeline, StopAtEnds, Structure,
    build_pipeline,
)


def _cone(n: int = 24) -> np.ndarray:
    """A cone along the slices: a disc shrinking from radius 12 (slice 0) to 1 (slice n - 1)."""
    z, y, x = np.ogrid[:n, :40, :40]
    return (y - 20) ** 2 + (x - 20) ** 2 <= (12 - 11 * z / (n - 1)) ** 2


def _structure(mask: np.ndarray, slices: tuple[int, ...], value: int = 1) -> Structure:
    painted = np.zeros_like(mask)
    painted[list(slices)] = mask[list(slices)]
    return Structure(value, painted, slices)


def _pipeline(image: np.ndarray | None = None, **values) -> Pipeline:
    call = resolve(SegmentOptions(**values), same_volume=True, whole=True, decoder_refused="the test")
    image = np.zeros((24, 40, 40), np.float32) if image is None else image
    return build_pipeline(call, within=3, spacing_mm=(3.0, 1.0, 1.0), image=image, window=(0.0, 1.0))


def test_the_default_rules_in_their_order_and_the_walk_asks_the_clean_up():
    pipeline = _pipeline(follow_anatomy=False)
    kinds = [type(rule) for rule in pipeline.rules]
    assert kinds == [HoldBetween, HoldPast, KeepComponents, StopAtEnds, IntensityStop, KeepToLimits]
    assert [type(rule) for rule in pipeline.walk] == [KeepComponents, StopAtEnds]
    switched = _pipeline(follow_anatomy=False, hold_between=False, intensity_ends=False, ends=False, fill_holes=True,
                         keep="largest")
    assert [type(rule) for rule in switched.rules] == [HoldPast, KeepComponents, FillHoles, KeepToLimits]
    assert switched.rules[1].keep == "largest" and [type(rule) for rule in switched.walk] == [KeepComponents]


def test_what_a_rule_grew_past_an_absent_slice_goes():
    cone = _cone()
    structure = _structure(cone, (4, 14))
    structure.absent = (9, 18)  # between the paintings: that slice; past them: that slice and beyond
    kept = KeepToLimits()(cone, structure)
    assert not kept[9].any() and not kept[18:].any()
    np.testing.assert_array_equal(kept[:9], cone[:9])
    np.testing.assert_array_equal(kept[10:18], cone[10:18])


def test_a_structure_grown_by_a_rule_claims_only_background():
    cone = _cone()
    structure = _structure(cone, (4, 14))
    labels = cone.astype(np.uint8)
    labels[11] = 0
    labels[11, 20:, :] = 2  # another structure holds the lower half of the lost slice
    Pipeline([HoldBetween((3.0, 1.0, 1.0))], walk=()).apply(labels, structure)
    assert (labels[11, 20:] == 2).all() and (labels[11, :20][cone[11, :20]] == 1).mean() > 0.9


@pytest.mark.parametrize(("between", "past"), [(True, False), (False, True)])
def test_each_rule_of_the_hold_is_switched_alone(between, past):
    cone = _cone()
    structure = _structure(cone, (4, 8))
    labels = cone.astype(np.uint8)
    labels[6] = 0  # a slice lost between the paintings
    _pipeline(follow_anatomy=False, intensity_ends=False, ends=False, hold_between=between, hold_past=past).apply(
        labels, structure)
    # the cone narrows from 4 to 8 (areas 325 and 213 pixels): falling so, it would end 8 slices past 8
    assert labels[6].any() == between and labels[17:].any() == (not past) and labels[16].any()


def test_the_walk_keeps_what_touches_the_painting_and_stops_at_the_end():
    cone = _cone()
    mask = cone.copy()
    mask[:, :3, :3] = True  # a look-alike apart from the structure
    mask[16] = False  # the structure ends here ...
    mask[18:] = True  # ... and what widens again beyond is a neighbour
    structure = _structure(cone, (10,))
    kept = _pipeline().kept(mask, structure.painted, structure.painted_slices)
    assert not kept[:, :3, :3].any() and not kept[16:].any()
    assert (kept[:16] == cone[:16]).all()


def test_the_intensity_stop_ends_a_structure_where_it_loses_the_paintings_intensities():
    cone = _cone()
    image = np.where(cone, 100.0, 0.0).astype(np.float32)
    image[15:][cone[15:]] = 500.0  # past slice 14 the mask covers other tissue
    labels = cone.astype(np.uint8)
    Pipeline([IntensityStop(image, (0.0, 600.0))], walk=()).apply(labels, _structure(cone, (8,)))
    assert labels[:15].sum() == cone[:15].sum() and not labels[15:].any()
