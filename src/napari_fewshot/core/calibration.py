"""Slices that calibrate an encoder's int8 quantization: the package's own sample CT, as the engine prepares it.

Every sixth slice of ``sample_data/abdomen_ct.nii.gz`` (48 slices of a real
abdominal CT) goes through the engine's preprocessing twice: at the CT window,
and at the percentiles an MR is normalised by (wider, lower contrast: the
spread of intensities an MR gives).  Nothing is downloaded and no user data is
read; :func:`calibration_digest` names the set in the quantized model's file name.
"""

from __future__ import annotations

import hashlib
from importlib.resources import as_file, files

import torch

from ..io import read_volume
from .preprocess import Preprocessing, normalise_intensities, to_encoder_slices

#: The shipped scan the slices come from, inside the package.
SAMPLE = "abdomen_ct.nii.gz"


def calibration_slices(size: int, step: int = 6) -> torch.Tensor:
    """Encoder input ``[N, 3, size, size]`` in [0, 1]: every ``step``-th slice of the sample CT at the CT window,
    then the same slices normalised as an MR."""
    with as_file(files("napari_fewshot") / "sample_data" / SAMPLE) as path:
        volume = read_volume(path)
    image = volume.data[::step]
    spacing = volume.geometry.spacing  # x, y, z: the rows' spacing over the columns'
    aspect = spacing[1] / spacing[0]
    normalised = [normalise_intensities(image, Preprocessing(modality)) for modality in ("CT", "MR")]
    return torch.cat([to_encoder_slices(slices, size, aspect) for slices in normalised])


def calibration_digest(slices: torch.Tensor) -> str:
    """A short digest of the calibration ``slices`` (what the quantized model was calibrated on)."""
    return hashlib.blake2b(slices.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
