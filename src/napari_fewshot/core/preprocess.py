"""From a scan's intensities to encoder input: [0, 1] slices, square, 3 channels.

Two steps, each invertible where it must be:

1. :func:`normalise_intensities`: CT is clipped to a window in Hounsfield units,
   MR to percentiles of its own intensities; both are scaled to [0, 1].
2. :func:`to_encoder_slices` pads each slice to a square (so shapes keep their
   aspect) and resizes it to the encoder's input size, replicating grey to 3
   channels; :func:`from_encoder_slices` maps per-slice maps back to the slice grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .intensity import Modality, guess_modality

#: The reference CT window (METHOD.md): HU clipped to [-125, 275].
CT_WINDOW = (-125.0, 275.0)
#: MR intensities are clipped at these percentiles of the volume (top 0.5 %).
MR_PERCENTILES = (0.0, 99.5)


@dataclass(frozen=True)
class Preprocessing:
    """How a volume becomes encoder input; its :meth:`key` identifies cached features."""

    modality: Modality
    ct_window: tuple[float, float] = CT_WINDOW
    mr_percentiles: tuple[float, float] = MR_PERCENTILES

    @classmethod
    def for_volume(cls, volume: np.ndarray, modality: Modality | None = None) -> Preprocessing:
        """The preprocessing of ``volume``, detecting CT or MR unless ``modality`` is given."""
        return cls(modality or guess_modality(volume))

    def key(self) -> str:
        window = self.ct_window if self.modality == "CT" else self.mr_percentiles
        return f"{self.modality}:{window[0]:g}:{window[1]:g}"


def normalise_intensities(volume: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``volume`` (any shape, file units) clipped and scaled to float32 in [0, 1].

    CT: ``preprocessing.ct_window`` in HU maps to [0, 1].  MR: the volume's own
    ``mr_percentiles`` map to [0, 1].  A constant volume maps to zeros.
    """
    values = np.asarray(volume, dtype=np.float32)
    if preprocessing.modality == "CT":
        low, high = preprocessing.ct_window
    else:
        low, high = (float(v) for v in np.percentile(values, preprocessing.mr_percentiles))
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def to_encoder_slices(slices: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Slices [N, H, W] in [0, 1] as encoder input [N, 3, size, size] (padded square, resized)."""
    tensor = torch.as_tensor(slices, dtype=torch.float32)
    height, width = tensor.shape[-2:]
    side = max(height, width)
    square = F.pad(tensor, (0, side - width, 0, side - height))
    resized = F.interpolate(square[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return resized.expand(-1, 3, -1, -1)


def from_encoder_slices(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Per-slice maps [N, C, h, w] on the encoder's square back to the slice grid [N, C, H, W].

    The inverse of :func:`to_encoder_slices`: resize to the padded square, then crop.
    """
    height, width = shape
    side = max(height, width)
    square = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)
    return square[..., :height, :width]
