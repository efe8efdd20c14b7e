"""Checks of NIfTI files, which ITK reads without noticing truncation, NaN or a contradictory header.

ITK's NIfTI reader fills the missing end of a truncated ``.nii`` or ``.nii.gz``
with whatever was there and reports success, reads NaN and infinite voxels as
0, sizes the voxels by ``datatype`` whatever ``bitpix`` says, reads a NaN
``qoffset`` as 0 mm, falls back to the qform when the sform is sheared, and
corrupts its memory on complex or RGB voxels with a vector intent.
:func:`check_nifti_file` reads the header and refuses what ITK would read
wrongly, then reads the payload as a stream (which also checks a ``.gz`` file's
CRC): it compares the payload's length with what the header announces and
counts the non-finite values of a float image.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VolumeReadError
from .formats import check_dimension, complex_voxels
from .geometry import check_grid

_CHUNK = 1 << 22

#: NIfTI datatype code -> (name, bits per voxel).
_DATATYPES = {
    2: ("uint8", 8), 4: ("int16", 16), 8: ("int32", 32), 16: ("float32", 32), 32: ("complex64", 64),
    64: ("float64", 64), 128: ("RGB24", 24), 256: ("int8", 8), 512: ("uint16", 16), 768: ("uint32", 32),
    1024: ("int64", 64), 1280: ("uint64", 64), 1536: ("float128", 128), 1792: ("complex128", 128),
    2048: ("complex256", 256), 2304: ("RGBA32", 32),
}

#: NIfTI datatype codes of real floating-point voxels.
_FLOAT_TYPES = {16: "f4", 64: "f8"}

#: Intent codes whose ITK reads dim[5] as the components of a vector voxel: 1005 symmetric matrix, 1007 vector.
_VECTOR_INTENTS = {1005: "symmetric matrix", 1007: "vector"}

#: Header field -> (byte offset, struct format), by header size (348: NIfTI-1, 540: NIfTI-2).
_FIELDS = {
    348: {"dim": (40, "8h"), "intent_code": (68, "h"), "datatype": (70, "h"), "bitpix": (72, "h"),
          "pixdim": (76, "8f"), "vox_offset": (108, "f"), "xform_codes": (252, "2h"), "qform": (256, "6f"),
          "srow": (280, "12f")},
    540: {"datatype": (12, "h"), "bitpix": (14, "h"), "dim": (16, "8q"), "pixdim": (104, "8d"),
          "vox_offset": (168, "q"), "xform_codes": (344, "2i"), "qform": (352, "6d"), "srow": (400, "12d"),
          "intent_code": (504, "i")},
}

_QFORM_NAMES = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")

#: sform_code of a transform to the scanner's frame: ITK takes the sform over a broken qform only with this code.
_SCANNER_ANAT = 1


@dataclass(frozen=True)
class _Header:
    """The fields of a NIfTI-1 or NIfTI-2 header the checks read (``dim`` and ``pixdim`` with their 8 entries)."""

    endian: str
    dim: tuple[int, ...]
    intent_code: int
    datatype: int
    bitpix: int
    pixdim: tuple[float, ...]
    vox_offset: float
    qform_code: int
    sform_code: int
    qform: tuple[float, ...]
    srow: tuple[float, ...]


@dataclass(frozen=True)
class _Layout:
    """Where the voxels of a NIfTI file are: from ``offset`` to ``end``, as ``dtype`` when it is a float type."""

    offset: int
    end: int
    dtype: np.dtype | None


def _header(start: bytes, path: Path) -> _Header:
    """The NIfTI-1 or NIfTI-2 header at the ``start`` of a file (its first 540 bytes or fewer)."""
    for endian in "<>" if len(start) >= 4 else "":
        (sizeof_hdr,) = struct.unpack(endian + "i", start[:4])
        if sizeof_hdr in _FIELDS and len(start) >= sizeof_hdr:
            values = {name: struct.unpack_from(endian + fmt, start, offset)
                      for name, (offset, fmt) in _FIELDS[sizeof_hdr].items()}
            return _Header(
                endian, values["dim"], *values["intent_code"], *values["datatype"], *values["bitpix"],
                values["pixdim"], *values["vox_offset"], *values["xform_codes"], values["qform"], values["srow"],
            )
    raise VolumeReadError(
        f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header); "
        "is it another format renamed, or a truncated download?"
    )


def _layout(header: _Header, path: Path) -> _Layout:
    """The voxels' place and float type; refuses a header ITK would read wrongly (see :func:`_check_header`)."""
    ndim, bitpix, vox_offset = header.dim[0], header.bitpix, header.vox_offset
    if not 1 <= ndim <= 7 or min(header.dim[1 : ndim + 1]) < 1 or bitpix <= 0 or not 0 <= vox_offset < 2**62:
        raise VolumeReadError(
            f"{path}: the NIfTI header is corrupt (dim={list(header.dim)}, bitpix={bitpix}, vox_offset={vox_offset})"
        )
    _check_header(header, path)
    voxels = 1
    for n in header.dim[1 : ndim + 1]:
        voxels *= int(n)
    dtype = np.dtype(header.endian + _FLOAT_TYPES[header.datatype]) if header.datatype in _FLOAT_TYPES else None
    return _Layout(int(vox_offset), int(vox_offset) + voxels * bitpix // 8, dtype)


def _check_header(header: _Header, path: Path) -> None:
    """Refuse what ITK would misread or crash on: 1-D, complex, RGB vectors, ``bitpix`` against ``datatype``, ..."""
    extra = header.dim[6 : header.dim[0] + 1]  # ITK drops dimensions 6 and 7 when they are one voxel
    # A 5th dimension holds a vector voxel's components (or is refused as 5D once read).
    check_dimension(path, "NIfTI", "dim[0]", 5 if extra and max(extra) == 1 else header.dim[0], range(2, 6))
    name, bits = _DATATYPES.get(header.datatype, (None, header.bitpix))
    if name is not None and name.startswith("complex"):
        raise complex_voxels(path, f"NIfTI datatype {header.datatype}, {name}")
    if name in ("RGB24", "RGBA32") and header.intent_code in _VECTOR_INTENTS:  # ITK corrupts its memory on these
        raise VolumeReadError(
            f"{path}: the NIfTI header is contradictory: datatype {header.datatype} ({name}) with intent_code "
            f"{header.intent_code} ({_VECTOR_INTENTS[header.intent_code]}), which napari-fewshot cannot read. "
            "Save the image again as a plain RGB or one-channel image."
        )
    if bits != header.bitpix:
        raise VolumeReadError(
            f"{path}: the NIfTI header is corrupt: datatype {header.datatype} ({name}) has {bits} bits per voxel "
            f"but bitpix says {header.bitpix}, so the file's length and its voxels do not agree. "
            "Copy or export it again."
        )
    _check_transforms(header, path)


def _check_transforms(header: _Header, path: Path) -> None:
    """Refuse a NaN or infinite qform or sform value ITK would use, and a sheared sform.

    ITK reads a NaN ``qoffset`` as 0 mm and a NaN quaternion as a flipped
    direction; with a qform broken so, it takes the sform only when
    ``sform_code`` is 1 (scanner), which is then read.  A sheared sform (a
    gantry tilt kept as such) ITK replaces by the qform without a word: it is
    refused by :func:`~napari_fewshot.io.geometry.check_grid`'s ``ValueError``.
    """
    spatial = min(header.dim[0], 3)
    srow = np.reshape(header.srow, (3, 4))
    broken = [f"pixdim[{i}]" for i in range(1, spatial + 1) if not np.isfinite(header.pixdim[i])]
    if header.sform_code > 0:
        broken += [f"srow_{axis}" for axis, row in zip("xyz", srow) if not np.all(np.isfinite(row))]
    if header.qform_code > 0 and (header.sform_code != _SCANNER_ANAT or broken):
        broken += [name for name, value in zip(_QFORM_NAMES, header.qform) if not np.isfinite(value)]
    if broken:
        raise VolumeReadError(
            f"{path}: the NIfTI header is corrupt: {', '.join(broken)} {'is' if len(broken) == 1 else 'are'} NaN or "
            "infinite, so where the voxels lie is unknown. Copy or export it again."
        )
    if header.sform_code > 0:
        spacing = np.linalg.norm(srow[:, :3], axis=0)
        if min(spacing) == 0:
            raise VolumeReadError(
                f"{path}: the NIfTI header is corrupt: its sform (srow_x, srow_y, srow_z) gives a voxel axis no "
                "length. Copy or export it again."
            )
        lps = srow * [[-1.0], [-1.0], [1.0]] + 0.0  # NIfTI's frame is RAS, ITK's (and the messages') LPS; no -0.0
        check_grid(tuple(spacing), tuple(lps[:, 3]), tuple((lps[:, :3] / spacing).ravel()))


def _check_gzip_name(path: Path) -> None:
    """Refuse a file named ``.gz`` that is not gzip-compressed, saying what it holds."""
    with open(path, "rb") as stream:
        start = stream.read(540)
    if start[:2] == b"\x1f\x8b":
        return
    try:
        _header(start, path)
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
    types), which ITK would read as 0.  A sheared sform raises ``ValueError``
    (see :func:`_check_transforms`).
    """
    compressed = path.name.lower().endswith(".gz")
    if compressed:
        _check_gzip_name(path)
    nonfinite, carry, position = 0, b"", 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            chunk = stream.read(540)
            layout = _layout(_header(chunk, path), path)
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
