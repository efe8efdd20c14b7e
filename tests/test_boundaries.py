"""The hybrid: LiteMedSAM's decoder draws the boundaries where the prototypes found a structure."""

import numpy as np
import pytest
import torch

from conftest import dice, ellipsoids
from napari_fewshot.core.boundaries import MARGIN, BoxCalibration, draw_boundaries, prompt_box
from napari_fewshot.core.engine import segment
from napari_fewshot.core.errors import SegmentationError
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.sam_decoder import BoxDecoder, square_box
from napari_fewshot.evaluation.methods import method


def test_a_prompt_box_is_the_mask_box_scaled_about_its_centre_plus_a_margin():
    mask = np.zeros((64, 64), bool)
    mask[16:32, 20:44] = True  # 16 rows, 24 columns: x4 on the 256 square
    box = square_box(mask)
    assert np.allclose(prompt_box(mask, (1.0, 1.0)), box + [-MARGIN, -MARGIN, MARGIN, MARGIN], atol=0.6)
    wider = prompt_box(mask, (1.0, 1.5))
    assert wider[2] - wider[0] == pytest.approx(1.5 * (box[2] - box[0] + 1) + 2 * MARGIN)
    assert (wider[1], wider[3]) == pytest.approx((box[1] - MARGIN - 0.5, box[3] + MARGIN + 0.5))
    assert prompt_box(np.zeros((8, 8), bool), (1.0, 1.0)) is None
    beside = mask.copy()
    beside[34:40, 20:30] = True  # a smaller look-alike caught beside the structure
    assert np.array_equal(prompt_box(beside, (1.0, 1.0)), prompt_box(mask, (1.0, 1.0)))
    calibration = BoxCalibration(np.ones((2, 2)), np.array([0.8, 0.9]), np.array([0.9, 0.8]))
    assert calibration.trusted.tolist() == [False, True]


def disk_and_ring(slices: int = 4, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume of a bright disk (label 1) and a bright ring (label 2) on every slice, in noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    disk = (y - 20) ** 2 + (x - 18) ** 2 < 10**2
    radius = np.hypot(y - 40, x - 44)
    ring = (radius > 8) & (radius < 15)
    image = rng.normal(0, 15, (slices, size, size))
    image[:, disk] += 250
    image[:, ring] += 250
    truth = np.broadcast_to(disk + 2 * ring, image.shape).astype(np.uint8)
    return image.astype(np.float32), truth


def test_the_decoder_draws_a_disk_and_does_not_fill_a_ring():
    image, truth = disk_and_ring()
    painting = np.zeros_like(truth)
    painting[1] = truth[1]
    cache = FeatureCache()
    calls = []
    hybrid = segment(image, painting, encoder="litemedsam", boundaries="decoder", device="cpu", cache=cache,
                     follow_anatomy=False, progress=lambda done, total, seconds_left: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    # each slice counts once for the head, and once more where the decoder draws: the disk but on its painted slice
    assert calls[-1][1] == len(hybrid.examined[1]) + len(hybrid.examined[2]) + len(hybrid.examined[1]) - 1
    prototype = segment(image, painting, encoder="litemedsam", boundaries="prototype", device="cpu", cache=cache,
                        follow_anatomy=False)
    assert prototype.boundaries == {1: "prototype", 2: "prototype"}
    assert hybrid.boundaries == {1: "decoder", 2: "prototype"}  # the decoder would fill the ring's box
    unpainted = np.arange(len(truth)) != 1
    assert dice(hybrid.labels[unpainted] == 1, truth[unpainted] == 1) > 0.9
    hole = np.zeros_like(truth, dtype=bool)
    hole[:, 36:45, 40:49] = True  # inside the ring's inner radius of 8
    assert np.count_nonzero(hybrid.labels[hole & unpainted[:, None, None]] == 2) < 0.1 * hole[unpainted].sum()
    assert dice(hybrid.labels[unpainted] == 2, truth[unpainted] == 2) > 0.6


def test_a_mask_too_small_for_the_encoders_square_keeps_its_prototype_boundary():
    masks = np.zeros((3, 512, 512), bool)
    masks[0, 100:200, 150:260] = True
    masks[1, 300, 300] = True  # one pixel of a 512-pixel slice: a quarter of a pixel on the 256 square
    assert prompt_box(masks[1], (1.0, 1.0)) is None
    embeddings = torch.zeros((3, 256, 64, 64))
    drawn = draw_boundaries(masks, embeddings, BoxDecoder(), np.ones((3, 2)))
    assert np.array_equal(drawn[1], masks[1]) and not drawn[2].any()
    assert drawn[0].shape == (512, 512)  # the decoder drew the large one


def test_each_painted_slice_decides_whether_the_decoder_draws_its_neighbours():
    # one structure, a disk on slices 0-2 that becomes a ring on slices 3-5: only the disk trusts the decoder
    image, truth = disk_and_ring(slices=6)
    structure = np.where(np.arange(6)[:, None, None] < 3, truth == 1, truth == 2)
    painting = np.zeros_like(truth)
    painting[[1, 4]] = structure[[1, 4]]
    result = segment(image, painting, encoder="litemedsam", boundaries="decoder", device="cpu")
    assert result.boundaries == {1: "decoder near painted slices 1; prototype near 4"}
    assert dice(result.labels[[0, 2]] == 1, structure[[0, 2]]) > 0.9
    hole = np.zeros_like(structure)
    hole[3:, 36:45, 40:49] = True
    assert np.count_nonzero(result.labels[hole] == 1) < 0.1 * hole.sum()


def test_the_decoder_needs_litemedsam_embeddings():
    image, truth = ellipsoids()
    painting = np.zeros_like(truth)
    painting[12] = truth[12]
    assert segment(image, painting, encoder="tiny", device="cpu").boundaries == {1: "prototype", 2: "prototype"}
    with pytest.raises(SegmentationError, match="use encoder='litemedsam'.*or boundaries='prototype'"):
        segment(image, painting, encoder="tiny", boundaries="decoder", device="cpu")
    with pytest.raises(SegmentationError, match="boundaries must be one of prototype, decoder"):
        segment(image, painting, encoder="tiny", boundaries="sam", device="cpu")


def test_benchmark_methods_name_their_boundaries():
    assert method("alpnet@none:all+prototype").options.boundaries == "prototype"
    assert method("dspnet").options.boundaries is None  # the engine's default
    assert method("alpnet+nolocation+prototype").options.location is False and method("alpnet").options.location is None
    with pytest.raises(ValueError, match="sam is not one of the flags threshold=VALUE, nolocation, .*prototype, decoder"):
        method("alpnet+sam")
