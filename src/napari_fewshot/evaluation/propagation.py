"""Slice-to-slice propagation of painted masks: how the peers segment a volume from one slice.

A *step* carries a mask ``[H, W]`` from one slice to a neighbouring one:

- :class:`BoxPromptStep`: the box around the mask prompts LiteMedSAM on the next
  slice (the way SAM-family tools propagate);
- :class:`RegistrationStep`: the next slice is registered to this one (SimpleITK
  demons, in mm) and the mask is warped along;
- :func:`copy_step`: the mask as it is.

:func:`propagate` walks from every painted slice up and down the volume until
the mask vanishes or it meets the part of the volume nearer another painted slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import torch

from ..core.sam_decoder import BoxDecoder, square_box

#: ``step(mask, source, target) -> mask``: a slice mask on ``source`` carried to slice ``target``.
Step = Callable[[np.ndarray, int, int], np.ndarray]


def propagate(seeds: dict[int, np.ndarray], n_slices: int, step: Step) -> np.ndarray:
    """Masks ``[n_slices, H, W]`` bool grown from the painted slice masks ``seeds`` (slice index -> ``[H, W]``).

    Every slice is reached from its nearest painted slice (the lower one on a tie),
    one step at a time; a walk stops where its mask becomes empty, so the slices
    beyond stay empty.  Painted slices keep their masks.
    """
    order = sorted(seeds)
    shape = np.asarray(seeds[order[0]]).shape
    result = np.zeros((n_slices, *shape), dtype=bool)
    for i, seed in enumerate(order):
        result[seed] = seeds[seed]
        lowest = (order[i - 1] + seed) // 2 + 1 if i > 0 else 0
        highest = (seed + order[i + 1]) // 2 if i + 1 < len(order) else n_slices - 1
        for targets in (range(seed + 1, highest + 1), range(seed - 1, lowest - 1, -1)):
            mask, source = result[seed], seed
            for target in targets:
                mask = np.asarray(step(mask, source, target), dtype=bool)
                if not mask.any():
                    break
                result[target], source = mask, target
    return result


def copy_step(mask: np.ndarray, source: int, target: int) -> np.ndarray:
    """The mask unchanged (the copy floor: the painted shape on every slice)."""
    return mask


class BoxPromptStep:
    """The box around the mask prompts LiteMedSAM's decoder on the target slice's cached embedding.

    ``embeddings``: ``[Z, 256, 64, 64]`` (the ``litemedsam`` encoder's trunk features
    of every slice, as the engine caches them); ``pixel_aspect``: row over column spacing.
    """

    def __init__(self, embeddings: torch.Tensor, decoder: BoxDecoder, pixel_aspect: float = 1.0) -> None:
        self.embeddings, self.decoder, self.pixel_aspect = embeddings, decoder, pixel_aspect

    def __call__(self, mask: np.ndarray, source: int, target: int) -> np.ndarray:
        box = square_box(mask, self.pixel_aspect)
        if box is None:
            return np.zeros_like(mask, dtype=bool)
        return self.decoder.decode(self.embeddings[target : target + 1], box, mask.shape, self.pixel_aspect)[0]


class RegistrationStep:
    """Demons registration of the target slice to the source slice; the mask is warped with the field.

    ``volume``: ``[Z, H, W]`` intensities scaled alike on every slice (e.g. the
    engine's [0, 1] normalisation); ``spacing``: ``(row, column)`` in mm.
    """

    def __init__(self, volume: np.ndarray, spacing: tuple[float, float], iterations: int = 50, smoothing: float = 1.5) -> None:
        self.volume = np.asarray(volume, dtype=np.float32)
        self.spacing = (float(spacing[1]), float(spacing[0]))  # SimpleITK: x (columns) first
        self.demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        self.demons.SetNumberOfIterations(iterations)
        self.demons.SetStandardDeviations(smoothing)  # of the field's Gaussian smoothing, in pixels

    def _image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing(self.spacing)
        return image

    def __call__(self, mask: np.ndarray, source: int, target: int) -> np.ndarray:
        fixed, moving = self._image(self.volume[target]), self._image(self.volume[source])
        field = self.demons.Execute(fixed, moving)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        warped = sitk.Resample(self._image(mask), fixed, transform, sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(warped) > 0.5
