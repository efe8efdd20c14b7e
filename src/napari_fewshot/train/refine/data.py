"""What the refine step trains on: the labelled slices a user painted or corrected, and every other slice.

A slice of a label volume with any non-zero voxel is labelled (its unpainted
voxels are background); every other slice of that volume, and every slice of a
volume given without labels, is unlabelled.  Intensities are normalised as the
engine does (CT: the HU window; MR: the volume's percentiles) and each slice is
padded to a physical square and resized to ``size`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...core.intensity import Modality
from ...core.preprocess import Preprocessing, to_encoder_slices
from ...core.refined import MAX_LABEL, model_input
from ...core.support import painted_slices


@dataclass
class RefineData:
    """``labelled`` ``[L, 1, S, S]`` and ``unlabelled`` ``[U, 1, S, S]`` float32 in [0, 1]; ``targets``
    ``[L, S, S]`` int64 class indices (0 background, ``i`` the label value ``values[i - 1]``)."""

    labelled: torch.Tensor
    targets: torch.Tensor
    unlabelled: torch.Tensor
    values: tuple[int, ...]
    modality: Modality

    @property
    def classes(self) -> int:
        return len(self.values) + 1


def _class_slices(labels: np.ndarray, values: tuple[int, ...], size: int, pixel_aspect: float) -> torch.Tensor:
    """Label slices ``[N, H, W]`` as class indices ``[N, size, size]``: each class's mask resized, the largest kept."""
    masks = [to_encoder_slices((labels == value).astype(np.float32), size, pixel_aspect)[:, 0] for value in values]
    scores = torch.stack([torch.full_like(masks[0], 0.5), *masks], dim=1)  # background wins below one half
    return scores.argmax(dim=1)


def refine_data(
    volumes: list[tuple[np.ndarray, float]],
    labels: list[np.ndarray],
    size: int,
    modality: Modality | None = None,
) -> RefineData:
    """Labelled and unlabelled slices of ``volumes`` (``[Z, H, W]`` and pixel aspect each, slices first).

    labels : label volumes of the first ``len(labels)`` volumes, each of its volume's
    shape; the others are unlabelled.  Every volume must be of one modality.
    """
    if not labels or not any(np.any(label) for label in labels):
        raise ValueError("nothing is labelled; paint or correct some slices of a structure (8 or more) first")
    values = tuple(int(v) for v in np.unique(np.concatenate([np.unique(label) for label in labels])) if v != 0)
    if values[0] < 0 or values[-1] > MAX_LABEL:
        raise ValueError(f"the labels hold the values {values[0]}..{values[-1]}; use 1..{MAX_LABEL} for structures "
                         "and 0 for unlabelled voxels")
    preprocessings = [Preprocessing.for_volume(volume, modality) for volume, _ in volumes]
    kinds = {p.modality for p in preprocessings}
    if len(kinds) > 1:
        raise ValueError(f"the volumes mix {' and '.join(sorted(kinds))}; refine on one kind of scan, or pass --modality")
    labelled, targets, unlabelled = [], [], []
    for index, ((volume, aspect), preprocessing) in enumerate(zip(volumes, preprocessings)):
        slices = model_input(volume, preprocessing, size, aspect)
        painted = np.zeros(len(volume), bool)
        if index < len(labels):
            if labels[index].shape != volume.shape:
                raise ValueError(f"labels {index + 1} have shape {labels[index].shape} but their image has {volume.shape}")
            painted = np.isin(np.arange(len(volume)), painted_slices(labels[index]))
            if painted.any():
                labelled.append(slices[painted])
                targets.append(_class_slices(labels[index][painted], values, size, aspect))
        unlabelled.append(slices[~painted])
    return RefineData(torch.cat(labelled), torch.cat(targets), torch.cat(unlabelled), values, preprocessings[0].modality)
