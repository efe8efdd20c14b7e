"""SegmentOptions: one frozen value, checked when made, handed to the engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import ellipsoids
from napari_fewshot.core.engine import segment
from napari_fewshot.core.errors import SegmentationError
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.engine import FewShotSession
from napari_fewshot.core.options import SegmentOptions, with_values


@pytest.mark.parametrize(("values", "message"), [
    (dict(threshold=1.5), r"threshold must be a probability between 0 and 1 \(exclusive\); got 1.5"),
    (dict(threshold=0.0), "threshold must be a probability between 0 and 1"),
    (dict(threshold=float("nan")), "threshold must be a probability"),
    (dict(keep="biggest"), "keep must be one of all, largest, painted; got 'biggest'"),
    (dict(decay_mm=-3.0), "decay_mm must be a length in mm above 0; got -3.0"),
    (dict(decay_mm=float("inf")), "decay_mm must be a length in mm above 0"),
    (dict(boundaries="sam"), "boundaries must be one of prototype, decoder; got 'sam'"),
    (dict(threshold="0.4"), "threshold must be a number; got '0.4'"),
    (dict(fill_holes="yes"), "fill_holes must be True or False; got 'yes'"),
])
def test_bad_options_are_refused_when_made(values, message):
    with pytest.raises(SegmentationError, match=message):
        SegmentOptions(**values)
    with pytest.raises(SegmentationError, match=message):  # given as a dict, checked alike
        with_values(values, {})


def test_options_as_a_dict_are_checked_by_name():
    assert with_values({"threshold": 0.4}, {"keep": "all"}) == SegmentOptions(threshold=0.4, keep="all")
    assert with_values({"threshold": 0.4}, {"threshold": 0.3}).threshold == 0.3  # a field named replaces the dict's
    with pytest.raises(SegmentationError, match="^unknown option thresh; the options are threshold, keep, location"):
        with_values({"thresh": 0.4}, {})
    with pytest.raises(SegmentationError, match=r"options must be SegmentOptions\(...\) or a dict .*; got float$"):
        with_values(0.4, {})


def test_options_are_frozen_and_the_engine_takes_them_or_their_fields():
    options = SegmentOptions(keep="largest", boundaries="prototype")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.keep = "all"
    image, truth = ellipsoids()
    support = np.zeros_like(truth)
    support[12] = truth[12]
    cache = FeatureCache()
    given = segment(image, support, encoder="tiny", options=options, cache=cache)
    session = FewShotSession(image, encoder="tiny", cache=cache)
    named = session.segment(support, {"keep": "largest", "boundaries": "prototype"})  # a dict, as a user may write
    np.testing.assert_array_equal(given.labels, named.labels)
    replaced = segment(image, support, encoder="tiny", options=options, threshold=0.99, cache=cache)
    assert np.count_nonzero(replaced.labels) < np.count_nonzero(given.labels)  # a field named replaces the option's
    with pytest.raises(SegmentationError, match="unknown option thresh; the options are threshold, keep"):
        segment(image, support, encoder="tiny", thresh=0.4, cache=cache)


def test_every_door_is_generated_from_the_options_declaration():
    from napari_fewshot._napari.segment_part import option_controls, options_from_controls
    from napari_fewshot.cli import build_parser
    from napari_fewshot.core.options import option_fields
    from napari_fewshot.evaluation.methods import method, method_flags

    names = [name for name, _ in option_fields()]
    args = build_parser().parse_args(["segment", "--image", "i", "--support-labels", "s", "--output", "o",
                                      "--no-follow-anatomy", "--keep", "largest", "--decay-mm", "20"])
    assert all(hasattr(args, name) for name in names)  # a flag per option
    assert (args.follow_anatomy, args.keep, args.decay_mm, args.ends) == (False, "largest", 20.0, None)
    flags = method_flags()
    assert {option for option, _ in flags.values()} <= set(names)
    assert method("alpnet+nofollow+fill+decoder").options == SegmentOptions(
        keep="painted", follow_anatomy=False, fill_holes=True, boundaries="decoder")
    controls = option_controls()
    assert list(controls) == ["keep", "boundaries", "fill_holes", "every_slice", "follow_anatomy"]
    assert options_from_controls(controls) == SegmentOptions()  # untouched controls leave the engine's defaults
    controls["follow_anatomy"].value, controls["keep"].value = False, "largest"
    assert options_from_controls(controls) == SegmentOptions(follow_anatomy=False, keep="largest")


def test_the_options_reference_is_written_from_the_declaration():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "options_reference.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
