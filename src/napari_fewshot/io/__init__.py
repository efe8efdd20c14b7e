"""Reading and writing volumes with their exact geometry; no napari or Qt here.

>>> from napari_fewshot.io import read_volume, write_volume
>>> scan = read_volume("ct.nii.gz")                      # doctest: +SKIP
>>> scan.data.shape, scan.geometry.spacing               # doctest: +SKIP
((112, 101, 122), (3.0, 3.0, 3.0))
>>> write_volume("mask.nrrd", mask, scan.geometry.with_pixel_type("uint8"))  # doctest: +SKIP
"""

from .dicom import DicomSource
from .errors import VolumeError, VolumeReadError, VolumeWriteError
from .formats import READ_FORMATS, WRITE_EXTENSIONS, format_name, looks_like_label_map
from .geometry import Geometry
from .labels import label_dtype
from .read import Volume, check_same_grid, read_volume
from .write import check_output_folder, check_writable, sidecar_path, write_sidecar, write_volume, write_volumes

__all__ = [
    "READ_FORMATS",
    "WRITE_EXTENSIONS",
    "DicomSource",
    "Geometry",
    "Volume",
    "VolumeError",
    "VolumeReadError",
    "VolumeWriteError",
    "check_output_folder",
    "check_same_grid",
    "check_writable",
    "format_name",
    "label_dtype",
    "looks_like_label_map",
    "read_volume",
    "sidecar_path",
    "write_sidecar",
    "write_volume",
    "write_volumes",
]
