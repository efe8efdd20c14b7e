"""A slice mask carried to its neighbour by demons registration, on the whole slice and in a box around the mask."""

import numpy as np

from conftest import dice
from napari_fewshot.core.preprocess import Preprocessing
from napari_fewshot.core.registration import SMOOTHING, SliceRegistration
from napari_fewshot.evaluation.propagation import propagate

MR = Preprocessing("MR")


def moving_disks(size: int = 48, slices: int = 6, step: int = 2, radius: int = 8) -> np.ndarray:
    """``[slices, size, size]`` bool: a disk whose centre moves ``step`` pixels along the columns per slice."""
    y, x = np.mgrid[:size, :size]
    return np.stack([(y - size // 2) ** 2 + (x - 14 - step * z) ** 2 < radius**2 for z in range(slices)])


def test_registration_carries_the_mask_along_a_moving_shape():
    disks = moving_disks()
    image = np.where(disks, 300.0, 30.0) + np.random.default_rng(0).normal(0, 3, disks.shape)
    result = propagate({0: disks[0]}, 6, SliceRegistration(image, (1.0, 1.0), MR))
    assert dice(result[5], disks[5]) > 0.8 and dice(disks[0], disks[5]) < 0.3


def test_a_margin_registers_the_box_around_the_mask_alone_and_agrees_with_the_whole_slice():
    disks = moving_disks(size=160, slices=2, step=3)
    image = np.where(disks, 300.0, 30.0) + np.random.default_rng(1).normal(0, 3, disks.shape)
    image[:, 120:, 120:] = 900.0  # far from the disk: the box never sees it
    whole = SliceRegistration(image, (0.8, 0.8), MR)(disks[0], 0, 1)
    boxed = SliceRegistration(image, (0.8, 0.8), MR, margin_mm=10.0)(disks[0], 0, 1)
    assert dice(boxed, disks[1]) > 0.9 and dice(boxed, whole) > 0.95
    rows, columns = np.nonzero(disks[0])
    assert not boxed[: rows.min() - 13].any() and not boxed[:, columns.max() + 14 :].any()  # 10 mm is 13 pixels
    assert not SliceRegistration(image, (0.8, 0.8), MR, margin_mm=10.0)(np.zeros((160, 160), bool), 0, 1).any()


def test_a_box_wider_than_the_registered_side_is_registered_on_bins_and_warped_at_full_resolution():
    disks = moving_disks(size=600, slices=2, step=20, radius=100)
    image = np.where(disks, 300.0, 30.0) + np.random.default_rng(3).normal(0, 3, disks.shape)
    carried = SliceRegistration(image, (0.5, 0.5), MR, margin_mm=20.0, max_side=128)(disks[0], 0, 1)  # 3x3 bins
    assert carried.shape == (600, 600) and dice(carried, disks[1]) > 0.94 and dice(disks[0], disks[1]) < 0.91
    edge = carried ^ np.roll(carried, 1, axis=1)
    assert np.count_nonzero(edge[300]) == 2  # one boundary on each side of the row: no blocks of 2 pixels


def test_the_default_smoothing_lets_the_field_bend_with_a_thin_band_that_a_smoother_one_loses():
    y, x = np.mgrid[:48, :48]
    # a band 3 pixels wide (a rib) that bends more and moves down a pixel on every slice
    band = np.stack([(np.abs(y - 12 - z - 0.005 * z * (x - 24) ** 2) < 1.5) & (x > 6) & (x < 42) for z in range(8)])
    image = np.where(band, 300.0, 30.0) + np.random.default_rng(4).normal(0, 3, band.shape)
    carried = {smoothing: propagate({0: band[0]}, 8, SliceRegistration(image, (1.0, 1.0), MR, smoothing=smoothing))[7]
               for smoothing in (SMOOTHING, 1.5)}
    assert dice(carried[SMOOTHING], band[7]) > 0.7
    assert dice(carried[SMOOTHING], band[7]) > dice(carried[1.5], band[7]) + 0.15
