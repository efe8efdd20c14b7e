import numpy as np
import pytest
import torch

from napari_fewshot.core.preprocess import (
    CT_WINDOW,
    Preprocessing,
    from_encoder_slices,
    normalise_intensities,
    to_encoder_slices,
)


def test_ct_window_maps_to_unit_range():
    hu = np.array([-1000.0, CT_WINDOW[0], 75.0, CT_WINDOW[1], 2000.0])
    np.testing.assert_allclose(normalise_intensities(hu, Preprocessing("CT")), [0, 0, 0.5, 1, 1])


def test_mr_is_clipped_at_its_own_top_percentile():
    mr = np.concatenate([np.linspace(0, 100, 1000), [1e6]]).astype(np.float32)
    out = normalise_intensities(mr, Preprocessing("MR"))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out[500] == pytest.approx(mr[500] / np.percentile(mr, 99.5), rel=1e-4)  # not squashed by the outlier


def test_constant_volume_and_detection():
    assert normalise_intensities(np.full((2, 3), 5.0), Preprocessing("MR")).max() == 0.0
    ct = np.full((4, 16, 16), -1000, np.int16)
    assert Preprocessing.for_volume(ct).modality == "CT"
    assert Preprocessing.for_volume(ct, "MR").modality == "MR"
    assert Preprocessing("CT").key() != Preprocessing("MR").key()


def test_encoder_slices_keep_aspect_and_invert():
    slices = torch.zeros(2, 30, 60)
    slices[:, 10:20, 20:40] = 1.0
    square = to_encoder_slices(slices, 64)
    assert square.shape == (2, 3, 64, 64)
    assert torch.equal(square[:, 0], square[:, 2])
    assert square[:, 0, 40:].max() == 0  # the padding below the 30 rows stays empty
    back = from_encoder_slices(square[:, :1], (30, 60))
    assert back.shape == (2, 1, 30, 60)
    assert ((back[:, 0] > 0.5) == (slices > 0.5)).float().mean() > 0.97
