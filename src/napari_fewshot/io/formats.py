"""File formats the plugin reads and writes, recognised by file name, and the images it reads in them."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import VolumeReadError

#: Extension -> format name, for files SimpleITK reads.
READ_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}

#: Extensions written as one self-contained file (so a write can be atomic).
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")

#: The extension of a DICOM SEG file: label maps of a scan read from a DICOM series.
SEG_EXTENSION = ".dcm"

#: Dimensions read as an image: a 2D slice, a 3D volume, a 4D series (of which one time point is read).
DIMENSIONS = range(2, 5)

_LABEL_NAME = re.compile(r"(seg|label|mask|annot|support)", re.IGNORECASE)


def split_extension(path: str | Path) -> tuple[str, str]:
    """``("name", ".nii.gz")`` for ``dir/name.nii.gz``; the extension is lower-cased."""
    name = Path(path).name
    lower = name.lower()
    for ext in sorted(READ_FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def format_name(path: str | Path) -> str | None:
    """The format a file name says it holds, or None when it is not one the plugin reads."""
    return READ_FORMATS.get(split_extension(path)[1])


def is_seg_path(path: str | Path) -> bool:
    """True when ``path`` is named as a DICOM SEG file (``.dcm``)."""
    return split_extension(path)[1] == SEG_EXTENSION


def looks_like_label_map(path: str | Path) -> bool:
    """True for names such as ``liver_seg.nii.gz``, ``labels.nrrd``, ``mask.mha`` or ``liver_support.nii``."""
    return bool(_LABEL_NAME.search(split_extension(path)[0]))


def check_dimension(path: Path, fmt: str, field: str, dimension: int, dimensions: range = DIMENSIONS) -> None:
    """Raise :class:`VolumeReadError` unless the header field ``field`` of ``path`` gives a dimension in ``dimensions``."""
    if dimension == 1:
        raise VolumeReadError(
            f"{path}: the file holds a 1-D array (its {fmt} header says {field} = 1), not an image; napari-fewshot "
            "needs a 3-D volume (a 2-D image is read as one slice)"
        )
    if dimension not in dimensions:
        raise VolumeReadError(
            f"{path}: the {fmt} header says {field} {dimension}; napari-fewshot reads images of "
            f"{dimensions.start} to {dimensions.stop - 1} dimensions. The file is corrupt or not a scan. "
            "Copy or export it again."
        )


def complex_voxels(path: Path, pixel_type: str) -> VolumeReadError:
    """The error for a file of complex voxels (``pixel_type``, e.g. ``complex64``), which the plugin does not read."""
    return VolumeReadError(
        f"{path}: the voxels are complex numbers ({pixel_type}), as MR k-space or phase data are, not intensities; "
        "napari-fewshot needs a magnitude image: export the magnitude of the data (e.g. numpy.abs) and open that"
    )
