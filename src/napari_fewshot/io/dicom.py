"""DICOM series given as a folder: find the series, refuse ambiguity, gaps and grids a volume cannot hold, read one."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .errors import VolumeReadError, itk_reason

#: Relative deviation of a slice step from the median step that counts as a gap.
GAP_TOLERANCE = 0.1
#: How far a slice may lie sideways (within its plane, in pixels) of where a rectangular grid through the
#: first slice puts it; further is a tilted (sheared) grid, which no spacing and direction describe.
SHEAR_TOLERANCE = 0.5
#: How much the direction cosines of one slice's orientation may differ from those of the series.
ORIENTATION_TOLERANCE = 1e-3

#: Modalities of objects that are not images (a segmentation saved beside its series is not a series to open).
NOT_IMAGES = ("SEG",)
#: SOP Class UID of a DICOMDIR: an index of a study's files, part of no series.
DICOMDIR_CLASS_UID = "1.2.840.10008.1.3.10"
#: The identifiers a dataset may leave blank when its file meta holds them: (dataset keyword, file meta keyword).
META_IDENTIFIERS = (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID"))


@dataclass(frozen=True)
class DicomSeries:
    """One series in a folder: its UID, files in slice order and a readable summary."""

    uid: str
    files: tuple[str, ...]
    description: str
    modality: str

    def summary(self) -> str:
        text = f"{self.uid} ({len(self.files)} slices"
        if self.modality:
            text += f", {self.modality}"
        if self.description:
            text += f", '{self.description}'"
        return text + ")"


@dataclass(frozen=True)
class DicomSource:
    """The files a volume was read from, so that a DICOM SEG can reference them.

    Attributes
    ----------
    series_uid : Series Instance UID of the series.
    files : the slice files in the volume's slice order: ``files[k]`` holds the
        array's slice ``k`` (axis 0 of the (z, y, x) array).
    instance_uids : SOP Instance UID of each of ``files``, in the same order
        (from the file meta where the dataset leaves it blank; ``""`` where
        neither holds one).
    """

    series_uid: str
    files: tuple[str, ...]
    instance_uids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for ``layer.metadata["dicom"]``."""
        return {"series_uid": self.series_uid, "files": list(self.files), "instance_uids": list(self.instance_uids)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DicomSource:
        """Rebuild a source from :meth:`to_dict`'s output."""
        return cls(str(values["series_uid"]), tuple(values["files"]), tuple(values["instance_uids"]))


def dicom_header(path: str | Path) -> pydicom.Dataset | None:
    """The header (all but the pixel data) of the DICOM file ``path``; None when it is not one pydicom reads.

    A file stored without preamble and file meta (no ``DICM`` prefix) is read
    too when it holds a SOP Class or Series Instance UID.  A SOP Class or
    Instance UID the dataset leaves blank is taken from the file meta, in the
    header returned (the file is never changed).
    """
    try:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # a dataset without preamble and file meta, or not DICOM (pydicom warns of that)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in header and "SeriesInstanceUID" not in header:
                return None
        for keyword, stored in META_IDENTIFIERS:
            if not text_of(header, keyword) and text_of(header.file_meta, stored):
                setattr(header, keyword, text_of(header.file_meta, stored))
        return header
    except Exception:  # anything pydicom cannot parse (not DICOM, truncated, unreadable, a folder)
        return None


def text_of(dataset: pydicom.Dataset, keyword: str) -> str:
    """The value of ``keyword`` in ``dataset`` (e.g. a UID) as text, ``""`` where it is missing or blank."""
    return str(dataset.get(keyword, "") or "").strip("\x00 ")


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _gdcm_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series GDCM finds directly inside ``folder`` (segmentations too), files sorted by slice position."""
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.ReadImageInformation()
        series.append(DicomSeries(uid, tuple(files), _tag(header, "0008|103e"), _tag(header, "0008|0060")))
    return series


def find_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series directly inside ``folder``, files sorted by slice position; segmentations are not series."""
    return [series for series in _gdcm_series(folder) if series.modality not in NOT_IMAGES]


def _check_all_read(folder: Path, chosen: DicomSeries, listed: set[str]) -> None:
    """Raise when a file of ``folder`` looks like a slice of ``chosen`` but was not read (truncated or corrupt).

    ``listed``: the names of the files GDCM put in a series.  A file it left out
    is one of the series when its header names the series, or names no series
    (not a DICOMDIR) or cannot be read at all though it starts as DICOM does.
    """
    unread = []
    for entry in sorted(folder.iterdir()):
        if entry.name in listed or entry.name.startswith(".") or not entry.is_file():
            continue
        header = dicom_header(entry)
        if header is None:
            with open(entry, "rb") as file:
                ours = file.read(132)[128:] == b"DICM"
        else:
            series, kind = text_of(header, "SeriesInstanceUID"), text_of(header, "SOPClassUID")
            ours = series in (chosen.uid, "") and kind != DICOMDIR_CLASS_UID
        if ours:
            unread.append(entry.name)
    if unread:
        raise VolumeReadError(
            f"{folder}: {unread[0]} looks like a DICOM file of series {chosen.uid} but cannot be read (truncated or "
            f"corrupt): {len(chosen.files)} of its {len(chosen.files) + len(unread)} files were read, "
            f"{len(unread)} not. Restore {'it' if len(unread) == 1 else 'them'} from the original export (or move "
            "what is not part of the series out of the folder), then open the folder again."
        )


def _check_slices(folder: Path, files: tuple[str, ...], headers: list[pydicom.Dataset]) -> None:
    """Raise unless the slices lie on one rectangular, evenly spaced grid (a volume's spacing and direction).

    Slices without positions (e.g. secondary captures) are taken in the order
    GDCM sorted them, as before; otherwise every slice needs its position and
    orientation, one orientation for all, positions along the slices' normal
    (not sideways: a gantry tilt) and evenly spaced (not a gap).
    """
    n_slices = len(files)
    if not any("ImagePositionPatient" in header for header in headers):
        return  # no positions to check (e.g. secondary capture); ITK used the slice order
    for keyword, name, count, unknown in (
        ("ImagePositionPatient", "Image Position (Patient) (0020,0032)", 3, "its place in the volume is unknown"),
        ("ImageOrientationPatient", "Image Orientation (Patient) (0020,0037)", 6,
         "the directions of its rows and columns are unknown"),
    ):
        lacking = [Path(f).name for f, header in zip(files, headers) if _numbers(header, keyword, count) is None]
        if lacking:
            raise VolumeReadError(
                f"{folder}: {lacking[0]} has no valid {name} ({len(lacking)} of {n_slices} slices lack it), so "
                f"{unknown}. Export the series again with it (from the scanner or PACS), or move slices that are "
                "not part of the volume out of the folder."
            )
    orientations = np.array([_numbers(header, "ImageOrientationPatient", 6) for header in headers])
    positions = np.array([_numbers(header, "ImagePositionPatient", 3) for header in headers])
    same = np.all(np.abs(orientations[:, None] - orientations[None]) <= ORIENTATION_TOLERANCE, axis=-1)
    orientation = orientations[int(np.argmax(same.sum(axis=1)))]  # the one most slices share
    odd = np.flatnonzero(np.any(np.abs(orientations - orientation) > ORIENTATION_TOLERANCE, axis=1))
    if len(odd):
        raise VolumeReadError(
            f"{folder}: {Path(files[odd[0]]).name} is oriented {_cosines(orientations[odd[0]])}, the series' other "
            f"slices {_cosines(orientation)} ({len(odd)} of {n_slices} slices differ); a volume's slices share one "
            "orientation. Move that slice out of the folder (a localizer or a reformat saved in the series?), or "
            "export the series again."
        )
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)  # in the slices' plane, mm
    pixel = _numbers(headers[0], "PixelSpacing", 2) or [1.0, 1.0]  # (between rows, between columns)
    in_pixels = np.abs(np.stack([sideways @ row / pixel[1], sideways @ column / pixel[0]], axis=-1)).max(axis=1)
    if in_pixels.max() > SHEAR_TOLERANCE:
        k = int(np.argmax(in_pixels))
        tilt = np.degrees(np.arctan2(np.linalg.norm(sideways[k]), abs(offsets[k] @ normal)))
        raise VolumeReadError(
            f"{folder}: a tilted or sheared acquisition (gantry tilt about {tilt:.1f} degrees): the slices are not "
            f"stacked along their normal, slice {k} ({Path(files[k]).name}) lies {np.linalg.norm(sideways[k]):.3g} mm "
            f"({in_pixels[k]:.2g} pixels) sideways of the first, and a volume read from it would be sheared. "
            "Resample it onto an orthogonal grid first (a tilt-corrected export from the scanner or PACS, or "
            "dcm2niix, which writes a tilt-corrected NIfTI), then open that."
        )
    if n_slices < 3:
        return
    steps = np.diff(positions @ normal)
    median = float(np.median(np.abs(steps)))
    bad = np.flatnonzero(np.abs(np.abs(steps) - median) > GAP_TOLERANCE * median)
    if median == 0 or len(bad):
        first = int(bad[0]) if len(bad) else 0
        raise VolumeReadError(
            f"{folder}: the DICOM slices are not evenly spaced: slices {first} and {first + 1} "
            f"are {abs(steps[first]):.3g} mm apart where the usual step is {median:.3g} mm "
            f"({len(bad)} uneven step(s); a slice is missing or duplicated). "
            "Export the complete series again, or resample it into one volume first."
        )


def _numbers(header: pydicom.Dataset, keyword: str, count: int) -> list[float] | None:
    """The ``count`` numbers of ``keyword`` in ``header``; None where it is missing or holds anything else."""
    value = header.get(keyword)
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [] if value in (None, "") else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):  # an empty or malformed value
        return None
    return numbers if len(numbers) == count else None


def _cosines(values: np.ndarray) -> list[float]:
    """Direction cosines rounded for a message."""
    return [round(float(v), 4) + 0.0 for v in values]


def read_series(folder: Path, series_uid: str | None = None) -> tuple[sitk.Image, DicomSource]:
    """Read one DICOM series of ``folder`` as a 3D image, slices ordered by position, and its files.

    A folder with several series needs ``series_uid``; the error lists the choices.
    Segmentations (DICOM SEG) in the folder are not series to read.  A slice
    file of the series that cannot be read, a slice without position or
    orientation, one in another orientation, a tilted (sheared) grid and a gap
    raise :class:`VolumeReadError`.
    """
    every = _gdcm_series(folder)
    all_series = [series for series in every if series.modality not in NOT_IMAGES]
    if not all_series:
        n_files = sum(1 for p in folder.iterdir() if p.is_file())
        raise VolumeReadError(
            f"{folder}: no DICOM series found in this folder ({n_files} file(s), none readable "
            "as DICOM). Give the folder that holds the .dcm slices, or a NIfTI/NRRD/MHA file."
        )
    if series_uid is None:
        if len(all_series) > 1:
            listing = "\n  ".join(s.summary() for s in all_series)
            raise VolumeReadError(
                f"{folder}: this folder holds {len(all_series)} DICOM series; choose one with "
                "series=UID (read_volume(folder, series=UID), or --series UID on the command line), or move "
                f"each into its own folder:\n  {listing}"
            )
        chosen = all_series[0]
    else:
        matches = [s for s in all_series if s.uid == series_uid]
        if not matches:
            listing = "\n  ".join(s.summary() for s in all_series)
            raise VolumeReadError(f"{folder}: no DICOM series with UID {series_uid}; the folder holds:\n  {listing}")
        chosen = matches[0]

    _check_all_read(folder, chosen, {Path(f).name for series in every for f in series.files})
    headers = [dicom_header(f) for f in chosen.files]
    if None in headers:
        unreadable = chosen.files[headers.index(None)]
        raise VolumeReadError(
            f"{folder}: DICOM series {chosen.uid} cannot be read: {unreadable} is not a DICOM file pydicom reads "
            "(corrupt?). Restore it from the original export, then open the folder again."
        )
    _check_slices(folder, chosen.files, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(f"{folder}: DICOM series {chosen.uid} cannot be read: {itk_reason(error)}") from error
    uids = tuple(text_of(header, "SOPInstanceUID") for header in headers)
    return image, DicomSource(chosen.uid, tuple(str(Path(f).resolve()) for f in chosen.files), uids)
