import numpy as np

from napari_fewshot.core.intensity import CT_DISPLAY_WINDOW, display_range, guess_modality


def test_ct_is_recognised_by_air_and_gets_the_soft_tissue_window():
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 30, (8, 32, 32)).astype(np.int16)
    ct[:, :6] = -1000  # air around the body
    assert guess_modality(ct) == "CT"
    assert display_range(ct, "CT") == CT_DISPLAY_WINDOW


def test_mr_gets_percentiles_that_ignore_outliers():
    rng = np.random.default_rng(1)
    mr = rng.uniform(100, 500, (8, 32, 32)).astype(np.float32)
    mr[0, 0, :5] = 30000  # a few bright artefact voxels
    assert guess_modality(mr) == "MR"
    low, high = display_range(mr, "MR")
    assert 100 <= low < 110 and 490 < high <= 500


def test_constant_volume_gets_a_usable_range():
    low, high = display_range(np.full((2, 3, 4), 7.0), "MR")
    assert (low, high) == (7.0, 8.0)
