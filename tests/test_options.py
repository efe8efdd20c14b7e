"""SegmentOptions: one frozen value, checked when made, handed to the engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import ellipsoids
from napari_fewshot.core.engine import segment
from napari_fewshot.core.errors import SegmentationError
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.options import SegmentOptions


@pytest.mark.parametrize(("values", "message"), [
    (dict(threshold=1.5), "threshold must be a probability between 0 and 1; got 1.5"),
    (dict(threshold=float("nan")), "threshold must be a probability"),
    (dict(keep="biggest"), "keep must be one of all, largest, painted; got 'biggest'"),
    (dict(decay_mm=-3.0), "decay_mm must be a length in mm above 0; got -3.0"),
    (dict(decay_mm=float("inf")), "decay_mm must be a length in mm above 0"),
    (dict(boundaries="sam"), "boundaries must be one of prototype, decoder; got 'sam'"),
])
def test_bad_options_are_refused_when_made(values, message):
    with pytest.raises(SegmentationError, match=message):
        SegmentOptions(**values)


def test_options_are_frozen_and_the_engine_takes_them_or_their_fields():
    options = SegmentOptions(keep="largest", boundaries="prototype")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.keep = "all"
    image, truth = ellipsoids()
    support = np.zeros_like(truth)
    support[12] = truth[12]
    cache = FeatureCache()
    given = segment(image, support, encoder="tiny", options=options, cache=cache)
    named = segment(image, support, encoder="tiny", keep="largest", boundaries="prototype", cache=cache)
    np.testing.assert_array_equal(given.labels, named.labels)
    replaced = segment(image, support, encoder="tiny", options=options, threshold=0.99, cache=cache)
    assert np.count_nonzero(replaced.labels) < np.count_nonzero(given.labels)  # a field named replaces the option's
    with pytest.raises(SegmentationError, match="unknown option thresh; the options are threshold, keep"):
        segment(image, support, encoder="tiny", thresh=0.4, cache=cache)
