"""npe2 writer: a Labels layer to NIfTI, NRRD or MHA on its scan's grid, or to DICOM SEG."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import write_volume
from ..io.dicom_seg import write_seg
from ..io.formats import is_seg_path
from .layers import dicom_source, labels_for_writing
from .structures import layer_names


def write_labels(path: str, data: np.ndarray, attributes: dict[str, Any]) -> list[str]:
    """Write a Labels layer in its scan's voxel layout and geometry; returns ``[path]``.

    A ``.dcm`` path writes a DICOM SEG of the DICOM series the scan was read from,
    its segments named after the layer's structure names (its features).
    """
    file_data, geometry = labels_for_writing(data, attributes)
    if is_seg_path(path):
        names = layer_names(attributes.get("features", {}))
        return [str(write_seg(path, file_data, geometry, dicom_source(attributes), names))]
    return [str(write_volume(path, file_data, geometry))]
