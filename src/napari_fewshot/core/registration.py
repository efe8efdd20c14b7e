"""A slice mask carried to a neighbouring slice by deformable registration of the two slices.

The target slice is registered to the source slice with demons (SimpleITK's fast
symmetric forces demons, in mm) and the mask is warped along the field: its
boundary follows the anatomy from one slice to the next, as 3D Slicer's and
ITK-SNAP's propagation tools carry a segmentation.  Given a margin, only the
box around the mask grown by that margin is registered, which on a 512x512 slice
holding a small structure is many times faster and changes little: the field is
smoothed over a few pixels, so what lies far outside the mask barely moves it.
Given a largest side, a wider box is registered on bins of pixels averaged to fit
(a 300-pixel liver box on a 512x512 CT slice, at most 128: 3x3 bins), and the
mask is warped at its own resolution: 50 demons iterations cost about a second
on 512x512 pixels and a tenth of one on 100x100 (2 cores, loaded); demons stops
sooner where the slices already match.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .preprocess import Preprocessing, intensity_window, normalise_intensities


#: The standard deviation (pixels of the registered image) of the Gaussian that smooths the demons' field
#: after every iteration.  Chosen on the development data's 84 structures
#: (docs/experiments/21-the-carried-boundary-s-field-smoothed-less.md), the painting carried slice by slice from its nearest painted slice; mean slice Dice on the 1618 slices between three
#: paintings: 0.5 gives 0.783, 0.75 0.797, 1.0 0.783, 1.5 (before) 0.759, 2.5 0.716; on the 2615 slices of
#: each structure's extent from one painting, 0.75 gives 0.563 and 1.5 0.512.  In the engine it raised the
#: mean whole-volume Dice from 0.599 to 0.635 (one painted slice) and 0.798 to 0.829 (three).
SMOOTHING = 0.75


class SliceRegistration:
    """``registration(mask, source, target)``: ``mask`` ``[H, W]`` bool on slice ``source`` warped onto slice ``target``.

    volume : ``[Z, H, W]`` intensities in file units (HU for CT).
    spacing : ``(row, column)`` pixel size in mm.
    preprocessing, window : how intensities are scaled to [0, 1] before registering
        (:func:`~napari_fewshot.core.preprocess.normalise_intensities`), alike on every
        slice; ``window`` the whole volume's (None: computed here).
    iterations, smoothing : the demons' iterations and the standard deviation (pixels)
        of the Gaussian that smooths its field.
    margin_mm : register only the box around the mask grown by this many mm on
        every side; None: the whole slice.
    max_side : register a box wider than this many pixels on bins averaged to fit;
        None: at full resolution.
    """

    def __init__(
        self, volume: np.ndarray, spacing: tuple[float, float], preprocessing: Preprocessing,
        window: tuple[float, float] | None = None, iterations: int = 50, smoothing: float = SMOOTHING,
        margin_mm: float | None = None, max_side: int | None = None,
    ) -> None:
        self.volume, self.preprocessing = volume, preprocessing
        self.window = intensity_window(volume, preprocessing) if window is None else window
        self.spacing = (float(spacing[1]), float(spacing[0]))  # SimpleITK: x (columns) first
        self.margin = None if margin_mm is None else np.ceil(margin_mm / np.asarray(spacing, float)).astype(int)
        self.max_side = max_side
        self.demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        self.demons.SetNumberOfIterations(iterations)
        self.demons.SetStandardDeviations(smoothing)

    def _image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing(self.spacing)
        return image

    def _slice(self, index: int, box: tuple[slice, slice]) -> sitk.Image:
        return self._image(normalise_intensities(self.volume[index][box], self.preprocessing, self.window))

    def _box(self, mask: np.ndarray) -> tuple[slice, slice]:
        if self.margin is None:
            return slice(None), slice(None)
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        return tuple(
            slice(max(int(found[0]) - grow, 0), int(found[-1]) + grow + 1)
            for found, grow in zip((rows, columns), self.margin)
        )

    def __call__(self, mask: np.ndarray, source: int, target: int) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return mask.copy()
        box = self._box(mask)
        fixed, moving = self._slice(target, box), self._slice(source, box)
        bins = 1 if self.max_side is None else -(-max(fixed.GetSize()) // self.max_side)
        if bins > 1:
            field = self.demons.Execute(sitk.BinShrink(fixed, [bins, bins]), sitk.BinShrink(moving, [bins, bins]))
        else:
            field = self.demons.Execute(fixed, moving)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        warped = sitk.Resample(self._image(mask[box]), fixed, transform, sitk.sitkLinear, 0.0)
        result = np.zeros_like(mask)
        result[box] = sitk.GetArrayFromImage(warped) > 0.5
        return result
