"""Write a volume or label map with its geometry, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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

    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{ext}", dir=path.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, useCompression=ext != ".nii")
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except (RuntimeError, OSError) as error:
        reason = itk_reason(error) if isinstance(error, RuntimeError) else str(error)
        raise VolumeWriteError(f"{path}: could not be written ({reason}); nothing was changed") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


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
