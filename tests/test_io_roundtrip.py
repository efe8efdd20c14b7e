"""Every format carries voxels, spacing, origin and direction through read and write."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DIRECTIONS, ORIGIN, SPACING, ramp, rotation, write_dicom_series, write_itk
from napari_fewshot.io import Geometry, read_volume, write_volume

WRITE_FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha"]
# NIfTI stores spacing, origin and the direction (as a quaternion) in float32.
TOLERANCE = {".nii.gz": 1e-5, ".nii": 1e-5, ".nrrd": 1e-12, ".mha": 1e-12, ".nhdr": 1e-12, ".mhd": 1e-12}


def assert_geometry(actual: Geometry, spacing, origin, direction, tol: float) -> None:
    np.testing.assert_allclose(actual.spacing, spacing, rtol=tol, atol=0)
    np.testing.assert_allclose(actual.origin, origin, rtol=0, atol=tol * 1000)
    np.testing.assert_allclose(np.reshape(actual.direction, (3, 3)), direction, atol=tol)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_read_file_written_by_simpleitk(tmp_path, ext, direction):
    data = ramp()
    path = write_itk(tmp_path / f"scan{ext}", data, direction=DIRECTIONS[direction])
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.data.dtype == np.int16 and volume.geometry.pixel_type == "int16"
    assert_geometry(volume.geometry, SPACING, ORIGIN, DIRECTIONS[direction], TOLERANCE[ext])
    assert not volume.is_label_map and volume.geometry.source == str(path)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ext", WRITE_FORMATS)
def test_write_then_read_reproduces_everything(tmp_path, ext, direction):
    data = ramp(dtype="float32") / 7.0
    geometry = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS[direction].ravel()), data.shape[::-1], "float32")
    path = write_volume(tmp_path / f"out{ext}", data, geometry)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)
    assert_geometry(volume.geometry, SPACING, ORIGIN, DIRECTIONS[direction], TOLERANCE[ext])
    # A second round trip adds no more than the format's own rounding: nothing drifts.
    again = read_volume(write_volume(tmp_path / f"again{ext}", volume.data, volume.geometry))
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(again.geometry, field), getattr(volume.geometry, field), rtol=0, atol=TOLERANCE[ext] / 100)


@pytest.mark.parametrize("ext", WRITE_FORMATS)
def test_label_map_keeps_its_values_and_type(tmp_path, ext):
    labels = np.zeros((4, 5, 6), dtype=np.uint16)
    labels[1, 2, 3], labels[2, 1:3, :2] = 1000, 3
    geometry = Geometry(SPACING, ORIGIN, tuple(DIRECTIONS["oblique"].ravel()), labels.shape[::-1], "uint16")
    volume = read_volume(write_volume(tmp_path / f"liver_seg{ext}", labels, geometry))
    assert volume.is_label_map
    assert volume.data.dtype == np.uint16
    np.testing.assert_array_equal(volume.data, labels)


def test_boolean_mask_is_written_as_uint8(tmp_path):
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 1:3, 2:4] = True
    path = write_volume(tmp_path / "mask.nrrd", mask, Geometry.identity(mask.shape))
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(read_volume(path).data, mask.astype(np.uint8))


def test_label_detection_by_name_and_by_option(tmp_path):
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1, 1] = 2
    for name in ("seg.nii.gz", "Labels_T1.nrrd", "tumour-mask.mha", "annotation.nii", "liver_support.nii.gz"):
        assert read_volume(write_itk(tmp_path / name, labels)).is_label_map, name
    scan = write_itk(tmp_path / "ct.nii.gz", labels)
    assert not read_volume(scan).is_label_map
    assert read_volume(scan, kind="labels").is_label_map
    assert not read_volume(tmp_path / "seg.nii.gz", kind="image").is_label_map


def test_float_label_map_with_whole_numbers_becomes_integers(tmp_path):
    labels = np.zeros((3, 4, 5), dtype=np.float32)
    labels[0, 0, :3] = [1, 2, 300]
    volume = read_volume(write_itk(tmp_path / "seg.nii.gz", labels))
    assert volume.is_label_map and volume.data.dtype == np.uint16
    np.testing.assert_array_equal(volume.data, labels)


def test_probability_map_named_mask_opens_as_image_unless_labels_asked(tmp_path):
    from napari_fewshot.io import VolumeReadError

    probability = np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    path = write_itk(tmp_path / "mask_probability.nii.gz", probability)
    assert not read_volume(path).is_label_map
    with pytest.raises(VolumeReadError, match="fractional values"):
        read_volume(path, kind="labels")


# DICOM frames are right-handed (the slice normal is row x column): no mirrored directions.
DICOM_DIRECTIONS = {"identity": np.eye(3), "oblique": rotation(2, 17.0) @ rotation(0, -9.0), "coronal": DIRECTIONS["coronal"]}


@pytest.mark.parametrize("direction", DICOM_DIRECTIONS)
def test_dicom_series_reads_in_slice_order(tmp_path, direction):
    data = ramp((7, 8, 9))
    folder = write_dicom_series(tmp_path / "dicom", data, direction=DICOM_DIRECTIONS[direction])
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.data, data)
    assert_geometry(volume.geometry, (0.8, 0.8, 2.5), (-50.0, -60.0, 100.0), DICOM_DIRECTIONS[direction], 1e-5)


def test_two_dimensional_image_is_one_slice(tmp_path):
    image = sitk.GetImageFromArray(np.arange(20, dtype=np.int16).reshape(4, 5))
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((3.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "xray.nrrd"))
    volume = read_volume(tmp_path / "xray.nrrd")
    assert volume.data.shape == (1, 4, 5)
    np.testing.assert_array_equal(volume.data[0], np.arange(20).reshape(4, 5))
    assert volume.geometry.spacing[:2] == (0.5, 0.25) and volume.geometry.origin[:2] == (3.0, 4.0)


def test_write_replaces_existing_file_keeping_its_permissions(tmp_path):
    target = tmp_path / "export.nii.gz"
    geometry = Geometry.identity((2, 3, 4), "uint8")
    write_volume(target, np.zeros((2, 3, 4), np.uint8), geometry)
    target.chmod(0o640)
    write_volume(target, np.ones((2, 3, 4), np.uint8), geometry)
    assert read_volume(target).data.min() == 1
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["export.nii.gz"]
