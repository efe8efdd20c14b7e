"""Integrity check of NIfTI files, which ITK reads without noticing truncation or NaN.

ITK's NIfTI reader fills the missing end of a truncated ``.nii`` or ``.nii.gz``
with whatever was there and reports success, and reads NaN and infinite voxels
as 0.  :func:`check_nifti_file` reads the header, then the payload as a stream
(which also checks a ``.gz`` file's CRC): it compares the payload's length with
what the header announces and counts the non-finite values of a float image.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VolumeReadError

_CHUNK = 1 << 22

#: NIfTI datatype codes of real floating-point voxels.
_FLOAT_TYPES = {16: "f4", 64: "f8"}


@dataclass(frozen=True)
class _Layout:
    """Where the voxels of a NIfTI file are: from ``offset`` to ``end``, as ``dtype`` when it is a float type."""

    offset: int
    end: int
    dtype: np.dtype | None


def _layout(header: bytes, path: Path) -> _Layout:
    """The voxels' place and float type, from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>" if len(header) >= 4 else "":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        raise VolumeReadError(
            f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header); "
            "is it another format renamed, or a truncated download?"
        )
    ndim = dims[0]
    if not 1 <= ndim <= 7 or min(dims[1 : ndim + 1]) < 1 or bitpix <= 0 or not 0 <= vox_offset < 2**62:
        raise VolumeReadError(
            f"{path}: the NIfTI header is corrupt (dim={list(dims)}, bitpix={bitpix}, vox_offset={vox_offset})"
        )
    voxels = 1
    for n in dims[1 : ndim + 1]:
        voxels *= int(n)
    dtype = np.dtype(endian + _FLOAT_TYPES[datatype]) if datatype in _FLOAT_TYPES else None
    return _Layout(int(vox_offset), int(vox_offset) + voxels * bitpix // 8, dtype)


def _check_gzip_name(path: Path) -> None:
    """Refuse a file named ``.gz`` that is not gzip-compressed, saying what it holds."""
    with open(path, "rb") as stream:
        start = stream.read(540)
    if start[:2] == b"\x1f\x8b":
        return
    try:
        _layout(start, path)
    except VolumeReadError:
        raise VolumeReadError(
            f"{path}: named .gz but not gzip-compressed, and not a NIfTI file either; "
            "is it another format renamed?"
        ) from None
    raise VolumeReadError(
        f"{path}: named .nii.gz but not gzip-compressed: it holds an uncompressed NIfTI image. "
        "Rename it to .nii (or compress it with gzip)."
    )


def check_nifti_file(path: Path) -> int:
    """Raise :class:`VolumeReadError` unless ``path`` holds a whole NIfTI image.

    Returns the number of NaN or infinite voxels in its raw data (0 for integer
    types), which ITK would read as 0.
    """
    compressed = path.name.lower().endswith(".gz")
    if compressed:
        _check_gzip_name(path)
    nonfinite, carry, position = 0, b"", 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            chunk = stream.read(540)
            layout = _layout(chunk, path)
            while chunk:
                if layout.dtype is not None:
                    values = carry + chunk[max(layout.offset - position, 0) : max(layout.end - position, 0)]
                    whole = len(values) - len(values) % layout.dtype.itemsize
                    nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(values[:whole], layout.dtype))))
                    carry = values[whole:]
                position += len(chunk)
                if not compressed and layout.dtype is None:  # the length is the file's; nothing else to look at
                    position = path.stat().st_size
                    break
                chunk = stream.read(_CHUNK)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise VolumeReadError(
            f"{path}: the compressed data is truncated or corrupt ({error}); the file cannot be read. "
            "Copy or export it again."
        ) from error
    if position < layout.end:
        raise VolumeReadError(
            f"{path}: the file is truncated: it holds {position} bytes of the {layout.end} its NIfTI "
            "header announces. Copy or export it again."
        )
    return nonfinite
