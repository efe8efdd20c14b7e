"""The volume engine on small synthetic volumes, through ``napari_fewshot.segment``."""

import warnings

import numpy as np
import pytest
import torch

import napari_fewshot
from conftest import dice, ellipsoids
from napari_fewshot.core.encoders import build_encoder
from napari_fewshot.core.errors import SegmentationCancelled, SegmentationError
from napari_fewshot.core.features import FeatureCache, VolumeFeatures, encode_slices
from napari_fewshot.core.heads import HEADS
from napari_fewshot.core.postprocess import (
    connected_to, fill_holes, largest_component, set_structure, stop_at_ends, stop_where_unlike,
)
from napari_fewshot.core.preprocess import Preprocessing, padded_shape
from napari_fewshot.core.priors import apply_distance_decay, apply_location_prior
from napari_fewshot.core.backends import resolve_runtime
from napari_fewshot.core.torch_backend import TorchTrunk
from napari_fewshot.core.support import SupportWarning, assign_supports, painted_structures, walks_from_painted

segment = napari_fewshot.segment


def one_slice_support(truth: np.ndarray, z: int = 12, values=(1, 2)) -> np.ndarray:
    support = np.zeros_like(truth)
    support[z] = np.where(np.isin(truth[z], values), truth[z], 0)
    return support


@pytest.fixture(scope="module")
def volume():
    return ellipsoids()


@pytest.mark.parametrize("head", HEADS)
def test_each_head_segments_the_volume_from_one_slice(volume, head):
    image, truth = volume
    result = segment(image, one_slice_support(truth, values=(1,)), encoder="tiny", head=head, cache=FeatureCache())
    assert result.labels.shape == truth.shape and result.labels.dtype == truth.dtype
    assert set(np.unique(result.labels)) <= {0, 1}
    assert dice(result.labels == 1, truth == 1) > 0.85
    probability, attention = result.probabilities[1], result.attention[1]
    assert probability.dtype == attention.dtype == np.float32 and probability.shape == truth.shape
    assert 0 <= probability.min() and probability.max() <= 1 and -1.001 <= attention.min() and attention.max() <= 1.001
    assert attention[truth == 1].mean() > attention[truth == 0].mean()
    assert result.support_slices == {1: (12,)} and result.head == head and result.device == "cpu"


def test_several_structures_are_merged_and_painted_slices_kept_exactly(volume):
    image, truth = volume
    support = one_slice_support(truth)
    support[12, :3, :3] = 2  # a stray stroke: it stays, because the user painted it
    result = segment(image, support, encoder="tiny", head="alpnet", cache=FeatureCache())
    assert np.array_equal(result.labels[12], support[12])
    assert dice(result.labels == 1, truth == 1) > 0.85 and dice(result.labels == 2, truth == 2) > 0.8
    np.testing.assert_array_equal(result.probabilities[2][12], support[12] == 2)
    # a higher background threshold can only take voxels away
    strict = segment(image, support, encoder="tiny", head="alpnet", threshold=0.9, cache=FeatureCache())
    assert np.count_nonzero(strict.labels) < np.count_nonzero(result.labels)
    assert np.all(strict.labels[strict.labels > 0] == result.labels[strict.labels > 0])


def test_structures_painted_on_their_own_slices_each_reach_their_full_extent(volume):
    image, truth = volume  # both span slices 4-20
    support = one_slice_support(truth, z=10, values=(1,)) + one_slice_support(truth, z=14, values=(2,))
    cache = FeatureCache()
    together = segment(image, support, encoder="tiny", head="alpnet", cache=cache)
    for value, z in ((1, 10), (2, 14)):
        alone = segment(image, np.where(support == value, support, 0), encoder="tiny", head="alpnet", cache=cache)
        held = (together.labels == value).reshape(len(truth), -1).any(axis=1)
        assert held[6:19].all(), f"structure {value} is cut short by the other's painted slice"
        assert dice(together.labels == value, truth == value) > dice(alone.labels == value, truth == value) - 0.01
    assert (together.labels[10] == 2).any() and (together.labels[14] == 1).any()  # unknown there, so predicted
    np.testing.assert_array_equal(together.labels[10] == 1, support[10] == 1)  # and each as painted on its slice
    np.testing.assert_array_equal(together.labels[14] == 2, support[14] == 2)


def test_an_absent_slice_bounds_a_structure_on_its_side(volume):
    image, truth = volume
    support = one_slice_support(truth, values=(1, 2))
    cache = FeatureCache()
    before = segment(image, support, encoder="tiny", head="alpnet", cache=cache)
    after = segment(image, support, encoder="tiny", head="alpnet", cache=cache, absent={1: [16]})
    assert (before.labels[16:] == 1).any() and not (after.labels[16:] == 1).any()
    np.testing.assert_array_equal(after.labels[:16] == 1, before.labels[:16] == 1)  # the other side untouched
    np.testing.assert_array_equal(after.labels == 2, before.labels == 2)  # and the other structure
    assert after.absent_slices == {1: (16,)} and not after.probabilities[1][16:].any()
    # between two paintings an absent slice clears only itself
    three = np.where(np.isin(np.arange(len(truth)), [8, 16])[:, None, None] & (truth == 1), 1, 0).astype(np.uint8)
    gap = segment(image, three, encoder="tiny", head="alpnet", cache=cache, absent={1: [12]})
    held = (gap.labels == 1).reshape(len(truth), -1).any(axis=1)
    assert not held[12] and held[9:12].all() and held[13:16].all()


@pytest.mark.parametrize("absent, message", [
    ({3: [5]}, "structure 3 is marked absent but painted on no slice"),
    ({1: [12]}, "structure 1 is both painted and marked absent on slice"),
    ({1: [99]}, "absent slices must be slice indices from 0 to 23"),
])
def test_absent_slices_that_cannot_hold_are_refused(volume, absent, message):
    image, truth = volume
    with pytest.raises(SegmentationError, match=message):
        segment(image, one_slice_support(truth), encoder="tiny", cache=FeatureCache(), absent=absent)


def test_features_are_computed_once_per_volume_across_new_supports(volume):
    image, truth = volume
    cache, calls = FeatureCache(), []
    segment(image, one_slice_support(truth, 12), encoder="tiny", cache=cache, follow_anatomy=False,
            progress=lambda *a: calls.append(a))
    # two structures predicted on the 24 slices (each counts once; the slices encoded take time, not count)
    assert calls[0][0] == 0 and calls[0][2] is None and calls[-1] == (48, 48, 0.0)
    assert [done for done, *_ in calls] == sorted(done for done, *_ in calls)
    assert all(left >= 0 for *_, left in calls[1:] if left is not None)
    for z in (8, 15):
        calls.clear()
        segment(image, one_slice_support(truth, z), encoder="tiny", cache=cache, follow_anatomy=False,
                progress=lambda *a: calls.append(a))
        assert calls[-1] == (48, 48, 0.0)
    assert cache.stats.encoded_slices == 24 and cache.stats.misses == 1 and cache.stats.hits == 2
    # another encoder or a changed image is another entry
    segment(image + 1, one_slice_support(truth), encoder="tiny", cache=cache)
    assert cache.stats.encoded_slices == 48


def test_a_cache_folder_keeps_whole_volumes_for_a_later_process(volume, tmp_path):
    image, truth = volume
    support = one_slice_support(truth)
    first_cache = FeatureCache(folder=tmp_path)
    first = segment(image, support, encoder="tiny", cache=first_cache)
    assert first_cache.stats.encoded_slices == len(image) and len(list(tmp_path.glob("*.safetensors"))) == 1
    later_cache = FeatureCache(folder=tmp_path)  # as a new process would have
    later = segment(image, support, encoder="tiny", cache=later_cache)
    assert later_cache.stats.encoded_slices == 0 and np.array_equal(later.labels, first.labels)
    segment(image + 1, support, encoder="tiny", cache=later_cache)  # another volume: encoded, and kept beside
    assert later_cache.stats.encoded_slices == len(image) and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_a_one_slice_preview_encodes_that_slice_and_the_support_only(volume):
    image, truth = volume
    support = one_slice_support(truth, 12)
    cache, calls = FeatureCache(), []
    preview = segment(image, support, encoder="tiny", head="alpnet", slices=[17], cache=cache,
                      progress=lambda *a: calls.append(a))
    assert cache.stats.encoded_slices == 2 and calls[-1] == (2, 2, 0.0)  # slices 12 and 17 encoded; 17 predicted for both
    predicted = np.flatnonzero(preview.labels.reshape(24, -1).any(axis=1))
    assert set(predicted) == {12, 17} and not preview.probabilities[1][16].any()
    assert dice(preview.labels[17] == 1, truth[17] == 1) > 0.8

    whole = segment(image, support, encoder="tiny", head="alpnet", keep="all", cache=cache)
    assert cache.stats.encoded_slices == 24  # the 22 slices the preview did not need
    np.testing.assert_allclose(preview.probabilities[2][17], whole.probabilities[2][17], atol=1e-5)
    with pytest.raises(SegmentationError, match=r"keep='painted' is not possible here \(only some slices"):
        segment(image, support, encoder="tiny", slices=[3], keep="painted", cache=cache)
    with pytest.raises(SegmentationError, match="slices must be slice indices from 0 to 23 along axis 0"):
        segment(image, support, encoder="tiny", slices=[24], cache=cache)


def test_a_cancelled_run_keeps_the_slices_it_encoded(volume):
    image, truth = volume
    cache, calls = FeatureCache(), []
    with pytest.raises(SegmentationCancelled):
        segment(image, one_slice_support(truth), encoder="tiny", batch_size=4, cache=cache, every_slice=True,
                progress=lambda *a: calls.append(a), cancel=lambda: len(calls) > 2)
    # told: the plan, the painted slice encoded first, a batch of 4 encoded; then the cancel was asked
    assert cache.stats.encoded_slices == 1 + 4
    segment(image, one_slice_support(truth), encoder="tiny", batch_size=4, cache=cache, every_slice=True)
    assert cache.stats.encoded_slices == 24


def test_cancel_is_asked_inside_the_encoder(volume):
    image, truth = volume
    asked, calls, cache = [], [], FeatureCache()

    def cancel() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(SegmentationCancelled):
        segment(image, one_slice_support(truth), encoder="tiny", batch_size=64, cache=cache, every_slice=True,
                cancel=cancel, progress=lambda *a: calls.append(a))
    # the painted slice is encoded first, then the other 23 in one batch: that batch never finished
    assert cache.stats.encoded_slices <= 1 and all(done == 0 for done, *_ in calls)


def test_cancel_between_head_batches(volume):
    image, truth = volume
    cache = FeatureCache()
    segment(image, one_slice_support(truth), encoder="tiny", cache=cache)
    with pytest.raises(SegmentationCancelled):
        segment(image, one_slice_support(truth), encoder="tiny", cache=cache, cancel=lambda: True)


def test_support_from_another_volume_of_another_shape(volume):
    image, truth = volume
    other_image, other_truth = ellipsoids(shape=(30, 52, 44), seed=1)
    support = one_slice_support(other_truth, 12, values=(1,))
    result = segment(image, support, support_image=other_image, encoder="tiny", head="alpnet", cache=FeatureCache())
    assert result.labels.shape == truth.shape
    assert dice(result.labels == 1, truth == 1) > 0.8


def test_slices_along_another_axis_give_the_transposed_result(volume):
    image, truth = volume
    support = one_slice_support(truth, values=(1,))
    cache, spacing = FeatureCache(), (2.5, 0.9, 0.7)  # spacing per array axis, whichever axis is sliced
    fast = dict(encoder="tiny", head="panet", cache=cache, follow_anatomy=False)
    along_z = segment(image, support, spacing=spacing, **fast)
    moved = segment(np.moveaxis(image, 0, 2), np.moveaxis(support, 0, 2), axis=2, spacing=(0.9, 0.7, 2.5), **fast)
    np.testing.assert_array_equal(np.moveaxis(moved.labels, 2, 0), along_z.labels)
    assert moved.support_slices == {1: (12,)}
    session = napari_fewshot.FewShotSession(np.moveaxis(image, 0, 1), axis=1, spacing=(0.9, 2.5, 0.7), encoder="tiny",
                                            head="panet", cache=cache)
    assert session.spacing_mm == spacing
    middle = session.segment(np.moveaxis(support, 0, 1), follow_anatomy=False)
    np.testing.assert_array_equal(np.moveaxis(middle.labels, 1, 0), along_z.labels)


def test_anisotropic_pixels_are_padded_to_a_physical_square():
    assert padded_shape((30, 60)) == (60, 60)
    assert padded_shape((30, 60), pixel_aspect=2.0) == (30, 60)  # rows twice as tall: already square in mm
    assert padded_shape((40, 60), pixel_aspect=2.0) == (40, 80)
    assert padded_shape((40, 60), pixel_aspect=0.5) == (120, 60)


def test_structure_painted_on_every_slice_and_a_structure_of_a_few_voxels(volume):
    image, truth = volume
    everywhere = truth.copy()
    everywhere[:, 0, 0] = 1  # structure 1 is painted on every slice
    result = segment(image, everywhere, encoder="tiny", cache=FeatureCache())
    np.testing.assert_array_equal(result.labels, everywhere)  # nothing left to predict
    tiny = np.zeros_like(truth)
    tiny[12, 20, 26:28] = 1  # two voxels in the bright ellipsoid
    result = segment(image, tiny, encoder="tiny", cache=FeatureCache())
    assert np.isfinite(result.probabilities[1]).all() and result.labels[12, 20, 26] == 1


def test_post_processing_keeps_the_largest_component_and_fills_holes():
    mask = np.zeros((5, 12, 12), bool)
    mask[1:4, 1:8, 1:8] = True
    mask[2, 4, 4] = False  # a hole
    mask[1:3, 10:12, 10:12] = True  # a smaller separate blob
    kept = largest_component(mask)
    assert not kept[1:3, 10:12, 10:12].any() and kept[1, 1, 1]
    filled = fill_holes(kept)
    assert filled[2, 4, 4] and filled.sum() == kept.sum() + 1
    assert not largest_component(np.zeros((2, 3, 3), bool)).any()
    seeds = np.zeros_like(mask)
    seeds[2, 11, 11] = True  # the user painted in the small blob: it stays, the big one goes
    touched = connected_to(mask, seeds)
    assert touched[1:3, 10:12, 10:12].all() and touched.sum() == 8
    labels = np.array([[[1, 1, 2, 0]]], np.uint8)
    set_structure(labels, 1, np.array([[[False, True, True, True]]]))  # it leaves one voxel, grows onto two
    assert labels.tolist() == [[[0, 1, 2, 1]]]  # onto background only: structure 2 keeps its voxel


@pytest.mark.parametrize("keep", ["largest", "painted"])
def test_keeping_components_in_the_engine_drops_a_look_alike(volume, keep):
    image, truth = volume
    image = image.copy()
    image[4:9, 40:46, 38:46] = 300 + np.random.default_rng(2).normal(0, 8, (5, 6, 8))  # a bright look-alike
    support = one_slice_support(truth, values=(1,))
    cache = FeatureCache()
    plain = segment(image, support, encoder="tiny", head="alpnet", cache=cache, keep="all", location=False,
                    follow_anatomy=False)  # registration would drop the look-alike's slices too
    cleaned = segment(image, support, encoder="tiny", head="alpnet", cache=cache, keep=keep, fill_holes=True,
                      location=False, follow_anatomy=False)
    assert plain.labels[4:9, 40:46, 38:46].any() and not cleaned.labels[4:9, 40:46, 38:46].any()
    assert dice(cleaned.labels == 1, truth == 1) > dice(plain.labels == 1, truth == 1)
    if keep == "painted":  # the default for a support painted on the image itself
        default = segment(image, support, encoder="tiny", head="alpnet", cache=cache, fill_holes=True, location=False,
                          follow_anatomy=False)
        np.testing.assert_array_equal(default.labels, cleaned.labels)


def test_a_structure_that_ends_mid_volume_is_not_predicted_past_its_end():
    image, truth = ellipsoids(shape=(40, 48, 48))  # both structures span slices 4-20; 19 slices of background follow
    result = segment(image, one_slice_support(truth), encoder="tiny", cache=FeatureCache())
    predicted = np.flatnonzero(result.labels.reshape(len(truth), -1).any(axis=1))
    assert predicted.min() >= 3 and predicted.max() <= 21
    assert dice(result.labels == 1, truth == 1) > 0.85 and dice(result.labels == 2, truth == 2) > 0.7
    # presence: 1 on the painted slice, 0 past the end, and what is predicted resembles the painting
    painted = result.support_slices[1][0]
    for value in (1, 2):
        presence = result.presence[value]
        assert presence.shape == (40,) and presence[painted] == pytest.approx(1.0) and presence[22:].max() == 0.0
        kept = (result.labels == value).any(axis=(1, 2))
        assert presence[kept].min() > 0.2


def test_a_structure_that_splits_keeps_both_branches():
    # one bright trunk on slices 4-11 that splits in two branches on slices 12-19, painted on the trunk only
    rng = np.random.default_rng(4)
    image = (100 + 20 * np.sin(np.arange(48) / 2.0) + rng.normal(0, 8, (24, 48, 48))).astype(np.float32)
    truth = np.zeros(image.shape, np.uint8)
    truth[4:12, 16:32, 12:36] = 1
    truth[12:20, 16:32, 8:20] = 1
    truth[12:20, 16:32, 28:40] = 1
    image[truth == 1] = 300 + rng.normal(0, 8, int(truth.sum()))
    support = np.zeros_like(truth)
    support[8] = truth[8]
    result = segment(image, support, encoder="tiny", cache=FeatureCache())
    for columns in (slice(8, 20), slice(28, 40)):
        assert dice(result.labels[12:20, :, columns] == 1, truth[12:20, :, columns] == 1) > 0.8


def _slices_of_areas(areas: list[int], side: int = 5) -> np.ndarray:
    """``[len(areas), side, side]`` bool whose slice ``z`` holds ``areas[z]`` voxels."""
    mask = np.zeros((len(areas), side, side), bool)
    for z, area in enumerate(areas):
        mask[z].flat[:area] = True
    return mask


def test_a_structure_stops_where_it_widens_into_a_neighbour_past_its_painted_slices():
    mask = _slices_of_areas([0, 1, 4, 8, 10, 12, 6, 3, 14, 2])
    # down from 4: narrows to an empty slice 0; up from 5: slice 8 grows 3 -> 14, so 8 and 9 go
    assert stop_at_ends(mask, (4, 5), 5).reshape(10, -1).sum(axis=1).tolist() == [0, 1, 4, 8, 10, 12, 6, 3, 0, 0]
    # painted at its tip (slice 9), the structure widens beyond it and is followed
    assert stop_at_ends(mask, (9,), 5).sum() == mask.sum()
    # a dip that recovers below the painted area: deep (5 to 11, more than twice) it ends there, shallow it is kept
    for areas, kept in (([20, 12, 5, 9, 11, 4], [20, 12, 5, 9, 0, 0]), ([20, 12, 8, 11, 14, 6], [20, 12, 8, 11, 14, 6])):
        assert stop_at_ends(_slices_of_areas(areas), (0,), 5).reshape(6, -1).sum(axis=1).tolist() == kept
    # the regrowth is measured from the narrowest of the `within` slices before: a dip further back does not count
    mask = _slices_of_areas([20, 8, 12, 14, 17, 19])
    assert stop_at_ends(mask, (0,), 5).reshape(6, -1).sum(axis=1).tolist() == [20, 8, 12, 14, 0, 0]
    assert stop_at_ends(mask, (0,), 2).sum() == mask.sum()

    image, truth = ellipsoids(shape=(40, 48, 48))
    image[21:27, 5:36, 5:46] = 300 + np.random.default_rng(3).normal(0, 8, (6, 31, 41))  # touches the bright tip
    support = one_slice_support(truth, values=(1,))
    cache = FeatureCache()
    running = segment(image, support, encoder="tiny", cache=cache, ends=False)
    stopped = segment(image, support, encoder="tiny", cache=cache)
    assert running.labels[22:27].any() and not stopped.labels[21:].any()
    assert dice(stopped.labels == 1, truth == 1) > dice(running.labels == 1, truth == 1)
    with pytest.raises(SegmentationError, match="ends=True needs the painting on the image itself"):
        segment(image, support, encoder="tiny", cache=cache, slices=[12], ends=True)


def test_a_structure_stops_where_it_loses_the_paintings_intensities_past_its_painted_slices():
    rng = np.random.default_rng(1)
    mask = np.ones((10, 6, 6), bool)
    image = 300 + rng.normal(0, 4, mask.shape)
    image[7:, :, :4] = 150  # slice 7 on: two thirds of each slice darker (a disc, the next organ)
    image[1, :, :3] = 150  # slice 1: half darker, still the structure
    painted = np.zeros_like(mask)
    painted[4] = True
    # window 400 wide: the painting's 5th to 95th percentiles widened by 10 on each side
    kept = stop_where_unlike(mask, image, painted, (4,), 400.0)
    assert kept.any(axis=(1, 2)).tolist() == [True] * 7 + [False] * 3
    assert stop_where_unlike(mask, image, painted, (4,), 400.0, fraction=0.3).all()  # a third like it: kept
    # a painting of a few pixels spans less than the tissue's noise: the margin keeps the same tissue
    few, noisy = np.zeros_like(mask), 300 + rng.normal(0, 8, mask.shape)
    few[4, 2, 2:5], noisy[4, 2, 2:5] = True, (299, 300, 301)
    assert stop_where_unlike(mask, noisy, few, (4,), 400.0).all()
    assert not stop_where_unlike(mask, noisy, few, (4,), 0.0)[5:].any()  # no margin: cut next to the painting

    image, truth = ellipsoids(shape=(32, 48, 48))  # the bright ellipsoid (300) spans slices 4-20
    image[20:30, 15:26, 20:33] = 230 + np.random.default_rng(5).normal(0, 8, (10, 11, 13))  # on from its tip, darker
    support = one_slice_support(truth, values=(1,))
    cache = FeatureCache()
    running, stopped = (segment(image, support, encoder="tiny", cache=cache, ends=False, intensity_ends=flag)
                        for flag in (False, None))  # the area rule off: this rule alone
    assert (running.labels[23:] == 1).any() and not (stopped.labels[23:] == 1).any()
    assert dice(stopped.labels == 1, truth == 1) > dice(running.labels == 1, truth == 1)
    with pytest.raises(SegmentationError, match="intensity_ends=True needs the painting on the image itself"):
        segment(image, support, encoder="tiny", cache=cache, slices=[12], intensity_ends=True)


def test_held_to_several_paintings_a_structure_does_not_run_on_into_a_look_alike():
    image, truth = ellipsoids(shape=(40, 48, 48))  # the bright ellipsoid spans slices 4-20
    image[18:36, 17:24, 20:32] = 300 + np.random.default_rng(5).normal(0, 8, (18, 7, 12))  # a bright tube goes on
    support = np.where(truth == 1, 1, 0).astype(np.uint8)
    support[[z for z in range(40) if z not in (12, 19)]] = 0  # painted on slices 12 and 19, narrowing towards 19
    cache = FeatureCache()
    running = segment(image, support, encoder="tiny", cache=cache, hold_past=False)
    held = segment(image, support, encoder="tiny", cache=cache)  # held by default
    assert running.labels[27:].any() and not held.labels[27:].any()  # its narrowing ends it 5 slices past 19: a gap
    assert dice(held.labels == 1, truth == 1) > dice(running.labels == 1, truth == 1)
    with pytest.raises(SegmentationError, match="hold_past=True needs the painting on the image itself"):
        segment(image, support, encoder="tiny", cache=cache, slices=[12], hold_past=True)


def test_painted_up_to_where_it_ends_a_structure_is_not_predicted_past_its_outer_paintings():
    image, truth = ellipsoids(shape=(32, 48, 48))  # the bright ellipsoid spans slices 4-20
    image[21:30, 14:27, 19:34] = 300 + np.random.default_rng(5).normal(0, 8, (9, 13, 15))  # as bright, on from its tip
    support = np.where(truth == 1, 1, 0).astype(np.uint8)
    support[[z for z in range(32) if z not in (5, 12, 19)]] = 0  # painted from near one end to near the other
    cache = FeatureCache()
    ended, running = (segment(image, support, encoder="tiny", cache=cache, ends=ends) for ends in (None, False))
    assert not (ended.labels[21:] == 1).any() and not (ended.labels[:4] == 1).any()
    assert (running.labels[21:] == 1).any()  # without the end rule it runs on into the look-alike
    assert dice(ended.labels == 1, truth == 1) > 0.95


def test_boundaries_carried_by_registration_keep_a_structure_off_the_look_alike_it_touches():
    z, y, x = np.mgrid[:20, :64, :64]
    tube = ((y - 32) ** 2 + (x - 32) ** 2 < 64) & (z >= 2) & (z <= 17)
    slab = (x >= 41) & (x < 53) & (abs(y - 32) < 12) & (z >= 2) & (z <= 17)  # as bright, a pixel's gap away
    rng = np.random.default_rng(0)
    image = (100 + rng.normal(0, 8, tube.shape)).astype(np.float32)
    image[tube | slab] = 300 + rng.normal(0, 8, np.count_nonzero(tube | slab))
    support = np.where(z == 10, tube, 0).astype(np.uint8)
    cache = FeatureCache()
    grid = segment(image, support, encoder="tiny", cache=cache, boundaries="prototype", follow_anatomy=False)
    calls = []
    followed = segment(image, support, encoder="tiny", cache=cache, boundaries="prototype",  # on by default
                       progress=lambda *a: calls.append(a))
    assert dice(followed.labels == 1, tube) > dice(grid.labels == 1, tube) + 0.05
    assert calls[-1] == (20 + 15, 20 + 15, 0.0)  # 20 slices predicted, 15 carried (16 found, 1 painted)
    on_slices = lambda labels: set(np.flatnonzero((labels == 1).any(axis=(1, 2))))  # noqa: E731
    assert on_slices(followed.labels) == on_slices(grid.labels)  # the prototypes still say where it is
    with pytest.raises(SegmentationError, match="follow_anatomy=True needs the painting on the image itself"):
        segment(image, support, encoder="tiny", cache=cache, slices=[12], follow_anatomy=True)


def test_distance_decay_in_mm():
    probability = np.ones((5, 1, 1), np.float32)
    apply_distance_decay(probability, (1,), slice_mm=2.5, length_mm=10.0)
    assert probability[:, 0, 0] == pytest.approx(np.exp(-np.array([2.5, 0, 2.5, 5, 7.5]) / 10), rel=1e-6)
    image, truth = ellipsoids()
    with pytest.raises(SegmentationError, match="decay_mm must be a length in mm above 0; got 0"):
        segment(image, one_slice_support(truth), encoder="tiny", decay_mm=0)


def test_the_location_prior_damps_a_look_alike_far_from_the_painting_in_plane(volume):
    image, truth = volume
    image = image.copy()
    image[9:12, 40:46, 38:46] = 300 + np.random.default_rng(2).normal(0, 8, (3, 6, 8))  # near slices, far in plane
    support = one_slice_support(truth, values=(1,))
    cache = FeatureCache()
    plain = segment(image, support, encoder="tiny", head="alpnet", cache=cache, keep="all", location=False,
                    follow_anatomy=False)  # registration alone would drop the look-alike's pieces too
    located = segment(image, support, encoder="tiny", head="alpnet", cache=cache, keep="all", follow_anatomy=False)
    assert plain.labels[9:12, 40:46, 38:46].any() and not located.labels[9:12, 40:46, 38:46].any()
    assert dice(located.labels == 1, truth == 1) > dice(plain.labels == 1, truth == 1)
    with pytest.raises(SegmentationError, match="location=True needs the painting on the image itself"):
        segment(image, support, support_image=image, encoder="tiny", cache=cache, location=True)


def test_location_prior_widens_with_distance_in_mm():
    probability = np.ones((3, 1, 41), np.float32)
    painted = np.zeros(probability.shape, bool)
    painted[0, 0, :11] = True  # columns 0-10 painted on slice 0
    apply_location_prior(probability, painted, (0,), spacing=(4.0, 1.0, 0.5))
    assert probability[:, 0, :11].min() == 1.0  # inside the painting
    # 20 columns = 10 mm beyond the painting: sigma 5 mm on slice 0, 5 + 0.5 * 8 = 9 mm two slices (8 mm) away
    assert probability[0, 0, 30] == pytest.approx(np.exp(-0.5 * (10 / 5) ** 2), rel=1e-5)
    assert probability[2, 0, 30] == pytest.approx(np.exp(-0.5 * (10 / 9) ** 2), rel=1e-5)


def test_nearest_painted_slice_and_ties():
    assert assign_supports(11, 11, (2, 8)) == {(2,): [0, 1, 2, 3, 4], (2, 8): [5], (8,): [6, 7, 8, 9, 10]}
    # another volume: positions scale along the slice axis
    assert assign_supports(21, 11, (2, 8)) == {(2,): list(range(10)), (2, 8): [10], (8,): list(range(11, 21))}
    # walking a mask from the painted slices: each slice once, from its nearest (the lower on a tie), in order
    walks = [(seed, list(targets)) for seed, targets in walks_from_painted((8, 2), 11)]
    assert walks == [(2, [3, 4, 5]), (2, [1, 0]), (8, [9, 10]), (8, [7, 6])]
    labels = np.zeros((4, 2, 2), np.uint8)
    labels[1, 0, 0], labels[3, 1] = 2, 1  # structure 1 on half of slice 3: the rest is its background
    assert painted_structures(labels) == {1: (3,), 2: (1,)}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda image, support: (image, np.zeros_like(support)), "no painted voxel"),
        (lambda image, support: (image, support[:, :-1]), r"support labels have shape \(24, 47, 48\)"),
        (lambda image, support: (np.where(support > 0, np.nan, image), support), "NaN or infinite"),
        (lambda image, support: (np.full_like(image, 7.0), support), "constant"),
        (lambda image, support: (image, support.astype(np.float32)), "must be integers"),
        (lambda image, support: (image[0], support[0]), "3D volume"),
    ],
)
def test_bad_input_is_refused_with_the_fix(volume, change, message):
    image, truth = volume
    bad_image, bad_support = change(image, one_slice_support(truth))
    with pytest.raises(SegmentationError, match=message):
        segment(bad_image, bad_support, encoder="tiny", cache=FeatureCache())


def test_a_support_of_more_structures_than_plausible_is_refused_before_any_work(volume, monkeypatch):
    from napari_fewshot.core import inputs

    image, _ = volume
    values = np.arange(image.size).reshape(image.shape) % 300  # an image given as the labels: 299 values painted
    with pytest.raises(SegmentationError, match="hold 299 distinct values, each a structure to segment: this looks "
                       r"like an image, not a label map .* \(or raise napari_fewshot.core.inputs.MAX_STRUCTURES\)$"):
        segment(image, values, encoder="sam")  # refused before the encoder is looked up
    monkeypatch.setattr(inputs, "MAX_STRUCTURES", 300)  # a label map that truly holds that many
    assert inputs.checked_labels(values, image.shape, True) is values


def test_unknown_names_and_devices(volume):
    image, truth = volume
    support = one_slice_support(truth)
    with pytest.raises(SegmentationError, match="unknown encoder 'sam'; choose one of"):
        segment(image, support, encoder="sam")
    with pytest.raises(SegmentationError, match="unknown head 'unet'; choose one of dspnet, alpnet, panet"):
        segment(image, support, encoder="tiny", head="unet")
    with pytest.raises(SegmentationError, match=r"keep=.painted. is not possible here \(the painting is on another volume\); choose one of all, largest"):
        segment(image, support, support_image=image, encoder="tiny", keep="painted")
    with pytest.raises(SegmentationError, match="unknown device 'tpu'"):
        segment(image, support, encoder="tiny", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SegmentationError, match="'cuda' is not available on this machine"):
            segment(image, support, encoder="tiny", device="cuda")
    with pytest.raises(SegmentationError, match="axis must be 0, 1 or 2"):
        segment(image, support, encoder="tiny", axis=3)
    for threshold in (2.0, -1.0, float("nan")):
        with pytest.raises(SegmentationError, match="threshold must be a probability between 0 and 1"):
            segment(image, support, encoder="tiny", threshold=threshold)


def test_a_support_of_another_modality_is_warned(volume):
    image, truth = volume  # MR-like: no air
    ct = image - 1100.0  # air around a body, in Hounsfield units
    with pytest.warns(SupportWarning, match="the image looks like CT and the support image like MR"):
        segment(ct, one_slice_support(truth), support_image=image, encoder="tiny", cache=FeatureCache())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the modality named: no guess to doubt
        segment(ct, one_slice_support(truth), support_image=image, modality="CT", encoder="tiny", cache=FeatureCache())


class RunsOutOfMemory(type(build_encoder("tiny"))):
    """The test encoder, on a device that holds at most 2 slices at a time (no GPU needed)."""

    def trunk(self, x):
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().trunk(x)


def test_out_of_memory_falls_back_to_smaller_batches(volume, caplog):
    image, _ = volume
    preprocessing = Preprocessing("MR")
    every = np.arange(len(image))
    runtime = resolve_runtime("torch", "f32", "cpu")

    def encoded(encoder, batch_size) -> torch.Tensor:
        features = VolumeFeatures(len(image))
        trunk = TorchTrunk(encoder.eval(), runtime)
        assert encode_slices(image, trunk, preprocessing, features, every, batch_size=batch_size) == len(image)
        return features.tensor.float()
    assert torch.allclose(encoded(RunsOutOfMemory(), 8), encoded(build_encoder("tiny"), 1), atol=1e-2)
    assert "encoding 2 slices at a time" in caplog.text

    class NeverFits(RunsOutOfMemory):
        def trunk(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(SegmentationError, match="ran out of memory encoding one slice"):
        encoded(NeverFits(), 4)


def test_encode_volume_encodes_only_the_slices_asked_for(volume):
    from napari_fewshot.core.engine import encode_volume

    image, _ = volume
    cache, calls = FeatureCache(), []
    encode_volume(image, slices=[9, 8, 10, 7], encoder="tiny", backend="torch", cache=cache,
                  progress=lambda done, total, seconds_left: calls.append((done, total)))
    (entry,) = cache._entries.values()
    assert np.flatnonzero(entry.encoded).tolist() == [7, 8, 9, 10] and calls[-1] == (4, 4)
    encode_volume(image, encoder="tiny", backend="torch", cache=cache)
    assert cache.stats.encoded_slices == len(image)  # the rest only
    with pytest.raises(SegmentationError, match="slices must be slice indices from 0 to 23"):
        encode_volume(image, slices=[30], encoder="tiny", cache=cache)


def test_a_session_segments_twice_with_different_supports_and_encodes_once(volume):
    from napari_fewshot import FewShotSession, SegmentOptions

    image, truth = volume
    cache = FeatureCache()
    session = FewShotSession(image, encoder="tiny", cache=cache)
    first = session.segment(one_slice_support(truth), SegmentOptions(every_slice=True))
    second = session.segment(one_slice_support(truth, z=8, values=(1,)), SegmentOptions(keep="largest"))
    assert first.encoded_slices == len(image) and second.encoded_slices == 0
    assert cache.stats.encoded_slices == len(image)
    assert first.support_slices == {1: (12,), 2: (12,)} and second.support_slices == {1: (8,)}
    assert dice(second.labels == 1, truth == 1) > 0.7
    ahead = FewShotSession(image, encoder="tiny", cache=FeatureCache())
    assert ahead.encode([5, 6]) == 2 and ahead.encode([6, 7]) == 1  # what is encoded is not encoded again


def test_a_support_session_must_share_the_encoder_and_runtime(volume):
    from napari_fewshot import FewShotSession

    image, truth = volume
    session = FewShotSession(image, encoder="tiny", backend="torch", cache=FeatureCache())
    other = FewShotSession(image, encoder="tiny", backend="openvino", cache=FeatureCache())
    with pytest.raises(SegmentationError, match="the support's session runs another encoder or runtime"):
        session.segment(one_slice_support(truth), support=other)


def test_changing_the_caller_s_array_after_making_a_session_does_not_poison_the_cache(tmp_path):
    image = ellipsoids((4, 32, 32))[0]
    original = image.copy()
    session = napari_fewshot.FewShotSession(image, encoder="tiny", backend="torch", cache=FeatureCache(folder=tmp_path))
    image[:] = original[:, ::-1, ::-1]  # the caller reuses its array for another scan
    session.encode()
    later = napari_fewshot.FewShotSession(original, encoder="tiny", backend="torch", cache=FeatureCache(folder=tmp_path))
    clean = napari_fewshot.FewShotSession(original, encoder="tiny", backend="torch", cache=FeatureCache())
    clean.encode()
    assert later.features.encoded.all() and torch.equal(later.features.tensor, clean.features.tensor)
    assert np.array_equal(session.volume, original) and not session.volume.flags.writeable  # the session's own copy
