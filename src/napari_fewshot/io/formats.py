"""File formats the plugin reads and writes, recognised by file name."""

from __future__ import annotations

import re
from pathlib import Path

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
