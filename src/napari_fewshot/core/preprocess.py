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

from .errors import SegmentationError
from .intensity import MODALITIES, Modality, guess_modality

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

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise SegmentationError(
                f"modality must be one of {', '.join(MODALITIES)}; got {self.modality!r} "
                "(napari-fewshot segments CT and MR scans; leave it out to detect it from the intensities)"
            )

    @classmethod
    def for_volume(cls, volume: np.ndarray, modality: Modality | None = None) -> Preprocessing:
        """The preprocessing of ``volume``, detecting CT or MR unless ``modality`` is given."""
        return cls(modality or guess_modality(volume))

    def key(self) -> str:
        window = self.ct_window if self.modality == "CT" else self.mr_percentiles
        return f"{self.modality}:{window[0]:g}:{window[1]:g}"


def intensity_window(volume: np.ndarray, preprocessing: Preprocessing) -> tuple[float, float]:
    """The intensities (file units) that map to 0 and 1: the CT window, or the MR volume's percentiles."""
    if preprocessing.modality == "CT":
        return preprocessing.ct_window
    low, high = np.percentile(volume, preprocessing.mr_percentiles)
    return float(low), float(high)


def normalise_intensities(
    volume: np.ndarray, preprocessing: Preprocessing, window: tuple[float, float] | None = None
) -> np.ndarray:
    """``volume`` (any shape, file units) clipped and scaled to float32 in [0, 1].

    CT: ``preprocessing.ct_window`` in HU maps to [0, 1].  MR: the volume's own
    ``mr_percentiles`` map to [0, 1].  ``window`` gives that range directly (from
    :func:`intensity_window` of the whole volume, when ``volume`` is a part of it).
    A constant volume maps to zeros.
    """
    values = np.asarray(volume, dtype=np.float32)
    low, high = window if window is not None else intensity_window(values, preprocessing)
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def spacing_first(spacing: tuple[float, float, float] | None, axis: int) -> tuple[float, float, float]:
    """Voxel size in mm with the slice axis first (1 mm without spacing), or a clear error.

    ``spacing`` is per array axis; the others keep their order, as ``np.moveaxis(volume, axis, 0)`` keeps them.
    """
    if spacing is None:
        return (1.0, 1.0, 1.0)
    order = [axis, *(other for other in range(3) if other != axis)]
    values = np.asarray(spacing, dtype=float)[order] if len(spacing) == 3 else None
    if values is None or not np.all(np.isfinite(values) & (values > 0)):
        raise SegmentationError(f"spacing must be three positive sizes in mm, one per array axis; got {spacing}")
    return tuple(float(v) for v in values)


def slice_aspect(spacing: tuple[float, float, float] | None, axis: int) -> float:
    """Row spacing over column spacing of the slices along ``axis``; 1 without spacing."""
    _, rows, columns = spacing_first(spacing, axis)
    return rows / columns


def padded_shape(shape: tuple[int, int], pixel_aspect: float = 1.0) -> tuple[int, int]:
    """A slice grid ``(H, W)`` padded (bottom and right) to a physical square.

    ``pixel_aspect`` is the row spacing over the column spacing (1 for square pixels).
    """
    height, width = shape
    if height * pixel_aspect >= width:
        return height, max(width, round(height * pixel_aspect))
    return max(height, round(width / pixel_aspect)), width


def to_encoder_slices(slices: np.ndarray | torch.Tensor, size: int, pixel_aspect: float = 1.0) -> torch.Tensor:
    """Slices [N, H, W] in [0, 1] as encoder input [N, 3, size, size].

    Each slice is padded to a physical square (:func:`padded_shape`), so shapes keep
    their aspect, and resized with antialiasing; grey is replicated to 3 channels.
    """
    tensor = torch.as_tensor(slices, dtype=torch.float32)
    height, width = tensor.shape[-2:]
    padded_height, padded_width = padded_shape((height, width), pixel_aspect)
    square = F.pad(tensor, (0, padded_width - width, 0, padded_height - height))
    resized = F.interpolate(square[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.expand(-1, 3, -1, -1)


def from_encoder_slices(maps: torch.Tensor, shape: tuple[int, int], pixel_aspect: float = 1.0) -> torch.Tensor:
    """Per-slice maps [N, C, h, w] on the encoder's square back to the slice grid [N, C, H, W].

    The inverse of :func:`to_encoder_slices`: resize to the padded grid, then crop.
    """
    height, width = shape
    square = F.interpolate(maps, size=padded_shape(shape, pixel_aspect), mode="bilinear", align_corners=False)
    return square[..., :height, :width]
