"""npe2 writer: a Labels layer to NIfTI, NRRD or MHA on its scan's grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import write_volume
from .layers import labels_for_writing


def write_labels(path: str, data: np.ndarray, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer in its scan's voxel layout and geometry; returns ``[path]``."""
    file_data, geometry = labels_for_writing(data, attributes)
    return [str(write_volume(path, file_data, geometry))]
