"""Checks of a file's header against its data, made before ITK reads the file.

ITK trusts a header: a MetaImage file whose ``NDims`` is out of range crashes the
process (a segmentation fault, which in napari takes the viewer and the unsaved
painting with it), and an NRRD header that claims gigabytes of voxels makes it
allocate them before it notices the file is 4 KB long.  :func:`check_file` reads
the header of a NIfTI, NRRD or MetaImage file itself, refuses values ITK would
trip on, and compares the size the header claims with the bytes the file holds
(a compressed payload can hold at most :data:`MAX_DEFLATE_RATIO` times its size).
An NRRD encoding ITK's reader lacks (bzip2) is refused here too: ITK allocates
the voxels the header claims before it says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .errors import VolumeReadError
from .formats import check_dimension, format_name
from .nifti import check_nifti_file

#: DEFLATE (gzip, zlib) expands its input at most 1032-fold.
MAX_DEFLATE_RATIO = 1032

#: Headers are short; a file without the end of its header within this many bytes is not a volume.
MAX_HEADER_BYTES = 1 << 16

#: NRRD encodings ITK's reader reads (it has no bzip2), by the kind of bound on their size.
_NRRD_ENCODINGS = {"raw": "raw", "gz": "deflate", "gzip": "deflate", "txt": "text", "text": "text", "ascii": "text",
                   "hex": "text"}

_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}

_META_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def check_file(path: Path) -> int:
    """Raise :class:`VolumeReadError` unless ``path``'s header is sane and its data as long as it claims.

    Parameters
    ----------
    path : a NIfTI, NRRD or MetaImage file (by its extension).

    Returns
    -------
    int
        The number of NaN or infinite voxels found in the raw data of a NIfTI
        file (ITK reads them as 0); 0 for the other formats, whose values ITK
        keeps.
    """
    fmt = format_name(path)
    if fmt == "NIfTI":
        try:
            return check_nifti_file(path)
        except ValueError as error:  # a sheared sform
            raise VolumeReadError(f"{path}: {grid_problem(error)}") from error
    if fmt == "NRRD":
        _check_nrrd(path)
    elif fmt == "MetaImage":
        _check_metaimage(path)
    return 0


def _header_lines(path: Path, fmt: str, ends: Callable[[str], bool], whole_file: bool = False) -> tuple[list[str], int]:
    """The header's lines (text) and the offset of the byte after it; ``ends(line)`` is True on its last line.

    ``whole_file``: the file is all header (a detached NRRD header), so its end ends the header too.
    """
    with open(path, "rb") as stream:
        head = stream.read(MAX_HEADER_BYTES)
    lines, offset = [], 0
    while offset < len(head):
        end = head.find(b"\n", offset)
        end = len(head) if end < 0 else end + 1
        line = head[offset:end].decode("latin-1").rstrip("\r\n")
        offset = end
        if ends(line):
            return lines + [line], offset
        lines.append(line)
    if len(head) < MAX_HEADER_BYTES and whole_file:
        return lines, offset
    raise VolumeReadError(
        f"{path}: not a {fmt} file, or its header is cut off (no end of header in its first "
        f"{len(head)} bytes). Copy or export it again."
    )


def _whole_numbers(path: Path, fmt: str, name: str, text: str, count: int, low: int) -> list[int]:
    """``count`` whole numbers >= ``low`` from a header field, or :class:`VolumeReadError`."""
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        values = []
    if len(values) != count or min(values) < low:
        raise VolumeReadError(
            f"{path}: the {fmt} header is corrupt: '{name}' is '{text.strip()[:80]}', not {count} whole number(s) "
            f">= {low}. "
            "Copy or export it again."
        )
    return values


def grid_problem(error: ValueError) -> str:
    """What is wrong with a grid :func:`~napari_fewshot.io.geometry.check_grid` refuses, and the fix.

    A sheared grid (a CT with gantry tilt stored as such) is resampled; anything else is a corrupt file.
    """
    if "not perpendicular" in str(error):
        return (
            "the voxel axes are not perpendicular (a sheared grid, as a CT with gantry tilt is stored): "
            f"{error}. Resample the scan onto a rectangular grid first (e.g. 3D Slicer's 'Resample Scalar "
            "Volume', or SimpleITK's Resample), then open the result."
        )
    return f"the file's geometry is invalid: {error}. Copy or export it again."


def _check_size(path: Path, claimed: int, data_file: Path, skip: int, encoding: str) -> None:
    """Refuse a header whose ``claimed`` bytes the data in ``data_file`` (after ``skip`` bytes) cannot hold.

    ``encoding``: ``"raw"``, ``"text"`` (the caller counts one character per value) or ``"deflate"``.
    """
    available = max(data_file.stat().st_size - skip, 0)
    possible = MAX_DEFLATE_RATIO * available + MAX_HEADER_BYTES if encoding == "deflate" else available
    if claimed > possible:
        where = "" if data_file == path else f" (data in {data_file})"
        raise VolumeReadError(
            f"{path}: the file is truncated or its header is corrupt: the header announces {claimed} bytes of "
            f"voxels, and the {available} bytes of data{where} cannot hold them"
            f"{' even compressed' if encoding == 'deflate' else ''}. Copy or export it again."
        )


def _data_file(path: Path, fmt: str, name: str) -> Path:
    data_file = path.parent / name
    if not data_file.is_file():
        raise VolumeReadError(
            f"{path}: the data file '{name}' its {fmt} header names is missing; keep it beside the header."
        )
    return data_file


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as stream:
        magic = stream.read(8)
    if not magic.startswith(b"NRRD000"):
        raise VolumeReadError(f"{path}: not an NRRD file (it does not start with 'NRRD000'); is it another format renamed?")
    detached = path.suffix.lower() == ".nhdr"
    lines, offset = _header_lines(path, "NRRD", lambda line: line == "", whole_file=detached)
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    for required in ("dimension", "sizes", "type", "encoding"):
        if required not in fields:
            raise VolumeReadError(f"{path}: the NRRD header has no '{required}' field; the file is corrupt. "
                                  "Copy or export it again.")
    (dimension,) = _whole_numbers(path, "NRRD", "dimension", fields["dimension"], 1, 1)
    sizes = _whole_numbers(path, "NRRD", "sizes", fields["sizes"], dimension, 1)
    check_dimension(path, "NRRD", "dimension", dimension - ("vector" in fields.get("kinds", "")))
    type_bytes = _NRRD_TYPE_BYTES.get(fields["type"].lower())
    if type_bytes is None:
        raise VolumeReadError(f"{path}: the NRRD header's type '{fields['type'][:40]}' is not a pixel type "
                              "napari-fewshot reads (integers, float or double)")
    encoding = _NRRD_ENCODINGS.get(fields["encoding"].lower())
    if encoding is None:
        raise VolumeReadError(
            f"{path}: the NRRD encoding '{fields['encoding'][:40]}' is not one napari-fewshot reads "
            f"({', '.join(_NRRD_ENCODINGS)}); save the file again with gzip encoding (e.g. unu save -e gzip, "
            "or 3D Slicer's Save) and open that"
        )
    voxels = math.prod(sizes)
    claimed = voxels if encoding == "text" else voxels * type_bytes
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        if detached:
            raise VolumeReadError(f"{path}: a detached NRRD header (.nhdr) without a 'data file' field")
        _check_size(path, claimed, path, offset, encoding)
    elif not name.startswith("LIST") and len(name.split()) == 1:
        _check_size(path, claimed, _data_file(path, "NRRD", name), 0, encoding)


def _check_metaimage(path: Path) -> None:
    lines, offset = _header_lines(path, "MetaImage", lambda line: line.split("=", 1)[0].strip() == "ElementDataFile")
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    if "NDims" not in fields or "DimSize" not in fields:
        raise VolumeReadError(f"{path}: the MetaImage header lacks NDims or DimSize; the file is corrupt. "
                              "Copy or export it again.")
    (dimension,) = _whole_numbers(path, "MetaImage", "NDims", fields["NDims"], 1, 0)
    check_dimension(path, "MetaImage", "NDims", dimension)
    sizes = _whole_numbers(path, "MetaImage", "DimSize", fields["DimSize"], dimension, 1)
    (channels,) = _whole_numbers(path, "MetaImage", "ElementNumberOfChannels",
                                 fields.get("ElementNumberOfChannels", "1"), 1, 1)
    type_bytes = _META_TYPE_BYTES.get(fields.get("ElementType", "").upper())
    if type_bytes is None:
        raise VolumeReadError(f"{path}: the MetaImage header's ElementType '{fields.get('ElementType', '')[:40]}' "
                              f"is not one napari-fewshot reads ({', '.join(_META_TYPE_BYTES)})")
    voxels = math.prod(sizes) * channels
    binary = fields.get("BinaryData", "True").lower() in ("true", "1")
    compressed = fields.get("CompressedData", "False").lower() in ("true", "1")
    encoding = "text" if not binary else "deflate" if compressed else "raw"
    claimed = voxels if encoding == "text" else voxels * type_bytes
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        _check_size(path, claimed, path, offset, encoding)
        compressed_bytes = fields.get("CompressedDataSize", "")
        if encoding == "deflate" and compressed_bytes.isdigit() and path.stat().st_size - offset < int(compressed_bytes):
            raise VolumeReadError(
                f"{path}: the file is truncated: it holds {path.stat().st_size - offset} bytes of the "
                f"{compressed_bytes} compressed bytes its header announces. Copy or export it again."
            )
    elif not name.upper().startswith("LIST") and "%" not in name and len(name.split()) == 1:
        header_bytes = int(fields["HeaderSize"]) if fields.get("HeaderSize", "").isdigit() else 0
        _check_size(path, claimed, _data_file(path, "MetaImage", name), header_bytes, encoding)
