"""Write a volume or label map with its geometry, and its JSON sidecar, atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import VolumeWriteError, itk_reason
from .formats import WRITE_EXTENSIONS, split_extension
from .geometry import Geometry


def check_writable(path: str | Path, geometry: Geometry) -> Path:
    """``path`` (user-expanded) when :func:`write_volume` could write there; else :class:`VolumeWriteError`.

    Checks the extension, the folder, and that ``path`` is not the scan ``geometry``
    was read from: a caller can ask before a long computation.
    """
    path = Path(path).expanduser()
    ext = split_extension(path)[1]
    if ext not in WRITE_EXTENSIONS:
        raise VolumeWriteError(f"{path}: cannot write '{ext or 'no extension'}'; use one of {', '.join(WRITE_EXTENSIONS)}")
    if not path.parent.is_dir():
        raise VolumeWriteError(f"{path}: the folder {path.parent} does not exist")
    if geometry.source and path.exists() and path.resolve() == Path(geometry.source).resolve():
        raise VolumeWriteError(
            f"{path}: this is the scan the data belongs to; writing here would overwrite it. Choose another file name."
        )
    return path


def write_volume(path: str | Path, data: np.ndarray, geometry: Geometry) -> Path:
    """Write ``data`` (z, y, x) on ``geometry``'s grid as NIfTI, NRRD or MetaImage (``.mha``).

    The format follows the extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``);
    spacing, origin and direction come from ``geometry``; the pixel type is
    ``data``'s (booleans are written as ``uint8``).  The file is written next to
    ``path`` under a temporary name, flushed to disk, then renamed over ``path``:
    an interrupted or failed write leaves no partial file and keeps any file that
    was there.  Writing over the file ``geometry`` was read from is refused, so an
    export never destroys the scan itself.

    Returns the path written.  Raises :class:`VolumeWriteError` naming the
    problem; nothing on disk changes then.
    """
    path = check_writable(path, geometry)
    ext = split_extension(path)[1]
    if tuple(data.shape) != geometry.shape:
        raise VolumeWriteError(
            f"{path}: the data's shape {tuple(data.shape)} (z, y, x) does not match the grid "
            f"{geometry.shape} it is to be written on"
        )

    image = sitk.GetImageFromArray(data.astype(np.uint8) if data.dtype == bool else data)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)

    try:
        atomic_write(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=ext != ".nii"))
    except RuntimeError as error:
        raise VolumeWriteError(f"{path}: could not be written ({itk_reason(error)}); nothing was changed") from error
    return path


def write_sidecar(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON next to the volume ``path`` (``mask.nii.gz`` -> ``mask.json``), atomically.

    Returns the sidecar's path; raises :class:`VolumeWriteError` when it cannot be written.
    """
    path = Path(path).expanduser()
    sidecar = path.with_name(split_extension(path)[0] + ".json")
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(sidecar, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return sidecar


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` for a temporary file next to ``path``, flush it, then rename it over ``path``.

    An interrupted or failed write leaves no partial file and keeps any file that
    was there (with its permissions).  ``OSError`` becomes :class:`VolumeWriteError`;
    other errors of ``write`` propagate after the temporary file is removed.
    """
    ext = split_extension(path)[1]
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{ext}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as error:
        raise VolumeWriteError(f"{path}: could not be written ({error}); nothing was changed") from error
    finally:
        if temporary.exists():
            temporary.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
