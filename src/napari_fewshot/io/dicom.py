"""DICOM series given as a folder: find the series, refuse ambiguity and gaps, read one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import VolumeReadError, itk_reason

#: Relative deviation of a slice step from the median step that counts as a gap.
GAP_TOLERANCE = 0.1

#: Modalities of objects that are not images (a segmentation saved beside its series is not a series to open).
NOT_IMAGES = ("SEG",)


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
    instance_uids : SOP Instance UID of each of ``files``, in the same order.
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


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def find_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series directly inside ``folder``, files sorted by slice position."""
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        header.ReadImageInformation()
        modality = _tag(header, "0008|0060")
        if modality not in NOT_IMAGES:
            series.append(DicomSeries(uid, tuple(files), _tag(header, "0008|103e"), modality))
    return series


def _check_even_spacing(folder: Path, reader: sitk.ImageSeriesReader, n_slices: int) -> None:
    """Raise when slice positions along the slice normal are not evenly spaced."""
    if n_slices < 3:
        return
    positions = []
    for index in range(n_slices):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # no positions to check (e.g. secondary capture); ITK used the slice order
        positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
    orientation = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.asarray(positions) @ normal
    steps = np.diff(along)
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


def read_series(folder: Path, series_uid: str | None = None) -> tuple[sitk.Image, DicomSource]:
    """Read one DICOM series of ``folder`` as a 3D image, slices ordered by position, and its files.

    A folder with several series needs ``series_uid``; the error lists the choices.
    Segmentations (DICOM SEG) in the folder are not series to read.
    """
    all_series = find_series(folder)
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

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(f"{folder}: DICOM series {chosen.uid} cannot be read: {itk_reason(error)}") from error
    _check_even_spacing(folder, reader, len(chosen.files))
    uids = tuple(
        reader.GetMetaData(index, "0008|0018").strip("\x00 ") if reader.HasMetaDataKey(index, "0008|0018") else ""
        for index in range(len(chosen.files))
    )
    return image, DicomSource(chosen.uid, tuple(str(Path(f).resolve()) for f in chosen.files), uids)

