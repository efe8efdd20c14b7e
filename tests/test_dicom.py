"""DICOM series read from a folder: series as archives store them, and grids a volume cannot hold (refused)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from napari_fewshot.io import VolumeReadError, read_volume
from napari_fewshot.io.dicom import dicom_header

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.5.1"
#: The patient and study attributes an anonymised series may lack.
PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)


def ct_volume(n: int = 6, size: int = 16) -> np.ndarray:
    """The voxels (z, y, x) of :func:`ct_slices`: every voxel differs, slice ``k`` from ``1000 k - 500``."""
    return (np.arange(size * size).reshape(1, size, size) + 1000 * np.arange(n).reshape(n, 1, 1) - 500).astype(np.int16)


def ct_slices(n: int = 6, size: int = 16, step: float = 2.5) -> list[Dataset]:
    """``n`` axial 16-bit CT slices of ``size`` x ``size`` pixels (0.7 mm) ``step`` mm apart, with file meta.

    Slice ``k`` is instance ``k + 1`` (UID ``SERIES_UID.k+1``), at z = 100 + k ``step``.
    """
    slices = []
    for k, pixels in enumerate(ct_volume(n, size)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"{SERIES_UID}.{k + 1}"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "fewshot-1", "19700101", "O"
        ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "A1", "20240101", "120000"
        ds.ReferringPhysicianName = "Doc^Tor"
        ds.StudyInstanceUID = SERIES_UID.rsplit(".", 1)[0] + ".9"
        ds.SeriesInstanceUID = SERIES_UID
        ds.FrameOfReferenceUID = SERIES_UID.rsplit(".", 1)[0] + ".7"
        ds.ImagePositionPatient = [-5.6, -5.6, 100.0 + k * step]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], step
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = pixels.astype("<i2").tobytes()
        slices.append(ds)
    return slices


def _blank_uids(slices: list[Dataset]) -> None:
    for ds in slices:
        ds.SOPClassUID = ds.SOPInstanceUID = ""


def _anonymised(slices: list[Dataset]) -> None:
    for ds in slices:
        for keyword in PATIENT_AND_STUDY:
            delattr(ds, keyword)


def _tilted(slices: list[Dataset]) -> None:  # a gantry tilt: each slice 1 mm further in y, orientation still axial
    for k, ds in enumerate(slices):
        ds.ImagePositionPatient = [-5.6, -5.6 + k, 100.0 + 2.5 * k]


def _rotated_slice(slices: list[Dataset]) -> None:  # slice 3 (file IM0003.dcm) coronal
    slices[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _no_orientation(slices: list[Dataset]) -> None:
    for ds in slices:
        del ds.ImageOrientationPatient


def _no_instance_uids(slices: list[Dataset]) -> None:  # stored without file meta: no UID anywhere
    for ds in slices:
        ds.SOPInstanceUID = ""


#: How archives and scanners store series that the plain one (``ct_slices``) differs from.
VARIANTS = {
    "plain": lambda slices: None,
    "blank-uids": _blank_uids,  # blank SOP Class and Instance UID in the dataset, both in the file meta
    "no-file-meta": lambda slices: None,  # written without preamble and file meta
    "anonymised": _anonymised,
    "tilted": _tilted,
    "rotated-slice": _rotated_slice,
    "no-orientation": _no_orientation,
    "no-instance-uids": _no_instance_uids,
}


def ct_series(folder: Path, variant: str = "plain", n: int = 6) -> Path:
    """Write :func:`ct_slices` as the series ``variant`` (:data:`VARIANTS`) into ``folder``, one file per slice.

    Files are named against slice position: slice ``k`` is ``IM{n - k:04d}.dcm``.
    """
    slices = ct_slices(n)
    VARIANTS[variant](slices)
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(slices):
        path = folder / f"IM{n - k:04d}.dcm"
        if variant in ("no-file-meta", "no-instance-uids"):
            del ds.file_meta
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)  # no preamble, no file meta
        else:
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return folder


def read_error(folder: Path) -> str:
    with pytest.raises(VolumeReadError) as raised:
        read_volume(folder)
    message = str(raised.value)
    assert message.startswith(f"{folder}: ") and "\n" not in message
    return message


@pytest.mark.parametrize("variant", ["blank-uids", "no-file-meta"])
def test_identifiers_the_dataset_lacks_come_from_the_file_meta_and_a_bare_dataset_is_read(tmp_path, variant):
    folder = ct_series(tmp_path / variant, variant)
    scan = read_volume(folder)
    np.testing.assert_array_equal(scan.data, ct_volume())
    assert scan.geometry.spacing == (0.7, 0.7, 2.5) and scan.geometry.has_identity_direction
    assert scan.dicom.instance_uids == tuple(f"{SERIES_UID}.{k + 1}" for k in range(6))
    assert [Path(f).name for f in scan.dicom.files] == [f"IM{6 - k:04d}.dcm" for k in range(6)]
    header = dicom_header(folder / "IM0001.dcm")
    assert (header.SOPClassUID, header.SOPInstanceUID) == (CT_IMAGE_STORAGE, f"{SERIES_UID}.6")
    assert pydicom.dcmread(folder / "IM0001.dcm", force=True).SOPInstanceUID == ("" if variant == "blank-uids" else
                                                                                   f"{SERIES_UID}.6")  # file unchanged
    (tmp_path / "notes.dcm").write_text("not DICOM")
    assert dicom_header(tmp_path / "notes.dcm") is None


@pytest.mark.parametrize(
    "variant, damage, expected",
    [
        ("tilted", None, r"a tilted or sheared acquisition \(gantry tilt about 21.8 degrees\).*slice 5 \(IM0001.dcm\) "
                         r"lies 5 mm \(7.1 pixels\) sideways.*Resample it onto an orthogonal grid first"),
        ("rotated-slice", None, r"IM0003.dcm is oriented \[1.0, 0.0, 0.0, 0.0, 0.0, -1.0\], the series' other slices "
                                r"\[1.0, 0.0, 0.0, 0.0, 1.0, 0.0\] \(1 of 6 slices differ\).*Move that slice out"),
        ("no-orientation", None, r"IM0006.dcm has no valid Image Orientation \(Patient\) \(0020,0037\) \(6 of 6 slices "
                                 r"lack it\), so the directions of its rows and columns are unknown"),
        ("plain", 300, r"IM0006.dcm looks like a DICOM file of series .* but cannot be read \(truncated or corrupt\): "
                       r"5 of its 6 files were read, 1 not. Restore it"),
        ("plain", -100, r"IM0006.dcm looks like a DICOM file of series .*5 of its 6 files were read"),
    ],
    ids=["tilted", "rotated-slice", "no-orientation", "truncated-header", "truncated-pixels"],
)
def test_grids_a_volume_cannot_hold_are_refused_naming_the_slice(tmp_path, variant, damage, expected):
    folder = ct_series(tmp_path / "series", variant)
    if damage is not None:
        first = folder / "IM0006.dcm"
        first.write_bytes(first.read_bytes()[:damage])  # cut in its header, or in its pixels
    assert re.search(expected, read_error(folder))


def test_files_beside_the_series_that_are_not_its_slices_are_left_alone(tmp_path):
    slices = ct_slices()
    for k, ds in enumerate(slices):  # positions written with jitter far below a pixel: not a tilt
        ds.ImagePositionPatient = [-5.6 + 0.02 * (k % 2), -5.6, 100.0 + 2.5 * k]
    folder = tmp_path / "series"
    folder.mkdir()
    for k, ds in enumerate(slices):
        pydicom.dcmwrite(folder / f"IM{6 - k:04d}.dcm", ds, enforce_file_format=True)
    index = Dataset()  # a DICOMDIR (an index of the study's files, part of no series)
    index.file_meta = FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    index.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.5.99"
    index.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index.FileSetID = "STUDY"
    pydicom.dcmwrite(folder / "DICOMDIR", index, enforce_file_format=True)
    report = ct_slices(1)[0]  # an object of another series, without pixels
    report.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.6.1"
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = report.SeriesInstanceUID + ".1"
    del report.PixelData
    pydicom.dcmwrite(folder / "report.dcm", report, enforce_file_format=True)
    (folder / "notes.txt").write_text("arterial phase")
    (folder / "._IM0001.dcm").write_bytes(bytes(128) + b"DICM")  # a hidden file (macOS metadata, a killed write)
    scan = read_volume(folder)
    np.testing.assert_array_equal(scan.data, ct_volume())
    assert len(scan.dicom.files) == 6
