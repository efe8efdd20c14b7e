"""Integrity check of NIfTI files, which ITK reads without noticing truncation.

ITK's NIfTI reader fills the missing end of a truncated ``.nii`` or ``.nii.gz``
with whatever was there and reports success.  :func:`check_nifti_file` reads the
header, then compares the payload's length with what the header announces
(a ``.gz`` is decompressed as a stream for that, which also checks its CRC).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from .errors import VolumeReadError

_CHUNK = 1 << 22


def _expected_bytes(header: bytes, path: Path) -> int:
    """vox_offset + voxel count x bytes per voxel, from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>" if len(header) >= 4 else "":
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        raise VolumeReadError(
            f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header); "
            "is it another format renamed, or a truncated download?"
        )
    ndim = dims[0]
    if not 1 <= ndim <= 7 or min(dims[1 : ndim + 1]) < 1 or bitpix <= 0:
        raise VolumeReadError(f"{path}: the NIfTI header is corrupt (dim={list(dims)}, bitpix={bitpix})")
    voxels = 1
    for n in dims[1 : ndim + 1]:
        voxels *= int(n)
    return int(vox_offset) + voxels * bitpix // 8


def check_nifti_file(path: Path) -> None:
    """Raise :class:`VolumeReadError` unless ``path`` holds a whole NIfTI image."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            header = stream.read(540)
            expected = _expected_bytes(header, path)
            if compressed:  # the length is known only once decompressed; this also checks the CRC
                total = len(header)
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
            else:
                total = path.stat().st_size
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise VolumeReadError(
            f"{path}: the compressed data is truncated or corrupt ({error}); the file cannot be read. "
            "Copy or export it again."
        ) from error
    if total < expected:
        raise VolumeReadError(
            f"{path}: the file is truncated: it holds {total} bytes of the {expected} its NIfTI "
            "header announces. Copy or export it again."
        )
