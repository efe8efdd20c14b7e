"""Read a CT or MRI volume, or a label map, with its geometry (SimpleITK)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from .dicom import DicomSource, read_series
from .errors import VolumeReadError, itk_reason
from .formats import READ_FORMATS, complex_voxels, format_name, looks_like_label_map
from .geometry import GRID_TOLERANCE, Geometry, check_grid
from .headers import check_file, grid_problem
from .labels import label_dtype

Kind = Literal["auto", "image", "labels"]
KINDS: tuple[str, ...] = ("auto", "image", "labels")

#: The most distinct values a file named like a label map holds to be read as one without asking (a scan has thousands).
MAX_AUTO_LABELS = 1000


class LabelMapWarning(UserWarning):
    """A file read as a label map, as asked, holds values that look like an image's (e.g. a CT given as labels)."""


@dataclass(frozen=True)
class Volume:
    """A 3D scan or label map on its physical grid.

    Attributes
    ----------
    data : array of shape (z, y, x) (the file's slice axis first), in the file's
        units (Hounsfield units for CT) and pixel type; integers for a label map.
    geometry : where each voxel sits, see :class:`Geometry`.
    is_label_map : True when ``data`` holds label values rather than intensities.
    dicom : the DICOM series' files, for a volume read from a DICOM folder (or a
        DICOM SEG of one); None for a file.
    """

    data: np.ndarray
    geometry: Geometry
    is_label_map: bool = False
    dicom: DicomSource | None = None


def read_volume(
    path: str | Path,
    *,
    kind: Kind = "auto",
    series: str | None = None,
    index: int | None = None,
) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file, or a folder holding one DICOM series.

    Parameters
    ----------
    path : a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, or a
        folder of DICOM slices.
    kind : ``"labels"`` reads a label map (integer values required), ``"image"`` an
        intensity image; ``"auto"`` takes a file whose name contains ``seg``,
        ``label``, ``mask``, ``annot`` or ``support`` as a label map when it holds whole
        numbers, none negative and at most :data:`MAX_AUTO_LABELS` distinct ones (a
        CT named ``liver_mask_ct`` is still an image).  A file read as ``"labels"``
        that does not hold such values gives a :class:`LabelMapWarning`.
    series : the series UID to read from a folder that holds several DICOM series.
    index : the time point of a 4D file, or the channel of a multi-component
        (e.g. RGB) file, to read as the 3D volume.

    A 2D image is read as a volume of one slice.  Every problem (a missing or
    corrupt file, NaN voxels, a 4D file without ``index``, an ambiguous DICOM
    folder, ...) raises :class:`VolumeReadError` naming the file and the fix.
    """
    path = Path(path).expanduser()
    if kind not in KINDS:
        raise VolumeReadError(f"{path}: kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    try:
        found = path.exists()
    except OSError as error:  # e.g. a name longer than the file system allows
        raise VolumeReadError(f"{path}: cannot be looked up ({error.strerror}); give the path of a volume file") from error
    if not found:
        raise VolumeReadError(f"{path}: no such file or folder")
    if not (path.is_dir() or path.is_file()):
        raise VolumeReadError(f"{path}: not a regular file or folder (a pipe or device?); give a volume file")
    try:
        if path.is_dir():
            (image, dicom), nonfinite = read_series(path, series), 0
        else:
            (image, nonfinite), dicom = _read_file(path), None
    except PermissionError as error:
        raise VolumeReadError(
            f"{path}: permission denied reading {error.filename or path}; ask for read access or copy it somewhere readable"
        ) from error
    image = _to_3d(image, path, index)
    data = sitk.GetArrayFromImage(image)
    if data.dtype.kind == "c":
        raise complex_voxels(path, str(data.dtype))
    if data.dtype.kind == "f":
        nonfinite = max(nonfinite, int(np.count_nonzero(~np.isfinite(data))))
    if nonfinite:
        raise VolumeReadError(
            f"{path}: {nonfinite} of {data.size} voxels are NaN or infinite; replace them "
            "(e.g. with the background value) before opening the volume"
        )
    try:
        geometry = Geometry(
            image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetSize(), str(data.dtype), str(path)
        )
    except ValueError as error:
        raise VolumeReadError(f"{path}: {grid_problem(error)}") from error
    named_labels = kind == "auto" and looks_like_label_map(path)
    unlike = _unlike_labels(data) if kind == "labels" or named_labels else None
    if kind == "labels" or (named_labels and unlike is None):
        try:
            labels = _label_array(data)
        except ValueError as error:  # whole numbers beyond 64-bit integers
            raise VolumeReadError(f"{path}: {error}") from error
        if labels is not None:
            if unlike is not None:
                warnings.warn(
                    f"{path}: read as a label map, as asked, but it looks like an image, not labels: it holds "
                    f"{unlike}. If it is a scan, open it as an image (kind='image'; on the command line, give it "
                    "as --image, not as labels)",
                    LabelMapWarning,
                    stacklevel=2,
                )
            return Volume(labels, geometry, is_label_map=True, dicom=dicom)
        if kind == "labels":
            raise VolumeReadError(
                f"{path}: not a label map: it holds fractional values (e.g. probabilities); "
                "open it as an image, or threshold it into whole label values first"
            )
    return Volume(data, geometry, dicom=dicom)


def check_same_grid(labels: Volume, image: Volume) -> None:
    """Raise :class:`VolumeReadError` unless the label map ``labels`` lies voxel for voxel on ``image``'s grid.

    Label maps are painted on (or exported from) the grid of the image they
    belong to; one of the same shape on another grid would be read as shifted.
    """
    mine, theirs = labels.geometry, image.geometry
    if mine.same_grid(theirs):
        return
    differ = ["size"] if mine.size != theirs.size else [
        name for name in ("spacing", "origin", "direction")
        if not np.allclose(getattr(mine, name), getattr(theirs, name), atol=GRID_TOLERANCE, rtol=0)
    ]
    detail = "; ".join(f"{name} {getattr(mine, name)} against {getattr(theirs, name)}" for name in differ)
    raise VolumeReadError(
        f"{mine.source or 'the labels'} is not on the grid of {theirs.source or 'the image'} ({detail}); "
        "paint the labels on that image's grid, or resample them onto it"
    )


def _read_file(path: Path) -> tuple[sitk.Image, int]:
    """The image in ``path`` and the number of non-finite voxels ITK would hide (see :func:`check_file`)."""
    fmt = format_name(path)
    if fmt is None:
        raise VolumeReadError(
            f"{path}: not a volume format napari-fewshot reads; use one of "
            f"{', '.join(READ_FORMATS)} or a folder of DICOM slices"
        )
    nonfinite = check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        check_grid(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())  # ITK hangs on some
        return reader.Execute(), nonfinite
    except ValueError as error:
        raise VolumeReadError(f"{path}: {grid_problem(error)}") from error
    except RuntimeError as error:
        raise VolumeReadError(
            f"{path}: cannot be read as {fmt} (corrupt, truncated, or not a {fmt} file): {itk_reason(error)}"
        ) from error


def _to_3d(image: sitk.Image, path: Path, index: int | None) -> sitk.Image:
    """A scalar 3D image: 2D becomes one slice, ``index`` picks a time point or channel."""
    dim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if components > 1 and dim > 3:
        raise VolumeReadError(f"{path}: a {dim}D image with {components} channels per voxel is not supported")
    count = components if components > 1 else (image.GetSize()[3] if dim == 4 else 1)
    what = "channels per voxel (e.g. RGB)" if components > 1 else "time points (4D)"
    if dim > 4:
        raise VolumeReadError(f"{path}: a {dim}D image; napari-fewshot segments 3D volumes")
    if count > 1 and index is None:
        raise VolumeReadError(
            f"{path}: the image has {count} {what}; napari-fewshot segments one 3D volume: "
            f"pick one with index=N, N in 0..{count - 1} (read_volume(path, index=N), or --index N on the command line)"
        )
    if index is not None and not 0 <= index < count:
        raise VolumeReadError(f"{path}: index {index} is out of range; the image has {count} {what}")
    if components > 1:
        image = sitk.VectorIndexSelectionCast(image, index)
    elif dim == 4:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, index])
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    return image


def _unlike_labels(data: np.ndarray) -> str | None:
    """What in ``data`` is unlike a label map (negative values, more than :data:`MAX_AUTO_LABELS` distinct ones), or None.

    Distinct values are counted on about a million voxels spread over the volume.
    """
    lowest, distinct = data.min(), len(np.unique(data.ravel()[:: max(1, data.size // 1_000_000)]))
    unlike = [f"negative values (down to {lowest})"] if lowest < 0 else []
    if distinct > MAX_AUTO_LABELS:
        unlike.append(f"at least {distinct} distinct values (a label map holds a few)")
    return " and ".join(unlike) or None


def _label_array(data: np.ndarray) -> np.ndarray | None:
    """``data`` as integer label values, or None when it holds fractional values."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b" or np.all(np.mod(data, 1) == 0):
        return data.astype(label_dtype(data))
    return None
