"""Intensity facts about a scan: CT or MR, and a window to display it with."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Modality = Literal["CT", "MR"]
#: The modalities napari-fewshot segments.
MODALITIES: tuple[str, ...] = get_args(Modality)

#: Soft-tissue display window for CT, as (low, high) Hounsfield units (W 400, L 40).
CT_DISPLAY_WINDOW = (-160.0, 240.0)
#: Percentiles of MR intensities shown as black and white.
MR_DISPLAY_PERCENTILES = (0.5, 99.5)
#: Below this many HU at the 1st percentile a scan holds air as CT shows it (-1000 HU).
CT_AIR_THRESHOLD = -500.0

_SAMPLE = 1_000_000


def _sample(volume: np.ndarray) -> np.ndarray:
    """About a million voxels spread over the whole volume, for fast percentiles."""
    step = max(1, volume.size // _SAMPLE)
    return np.asarray(volume).ravel()[::step]


def guess_modality(volume: np.ndarray) -> Modality:
    """``"CT"`` when the volume holds air in Hounsfield units, else ``"MR"``.

    ``volume`` is any array of intensities as read from the file.  CT scans of a
    body or head include air around it (about -1000 HU); MR intensities are not
    negative beyond noise.  A cropped CT without air reads as MR: callers that know
    better pass the modality explicitly.
    """
    return "CT" if float(np.percentile(_sample(volume), 1)) < CT_AIR_THRESHOLD else "MR"


def display_range(volume: np.ndarray, modality: Modality) -> tuple[float, float]:
    """Intensities (low, high) to show as black and white: a CT window or MR percentiles."""
    if modality == "CT":
        return CT_DISPLAY_WINDOW
    low, high = (float(v) for v in np.percentile(_sample(volume), MR_DISPLAY_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)
