"""Bad input gives an error naming the file and the problem, and changes nothing on disk."""

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ramp, write_dicom_series, write_itk
from napari_fewshot.io import Geometry, VolumeReadError, VolumeWriteError, read_volume, write_volume


def snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def read_error(path, **kwargs) -> str:
    before = snapshot(path.parent)
    with pytest.raises(VolumeReadError) as raised:
        read_volume(path, **kwargs)
    assert snapshot(path.parent) == before
    message = str(raised.value)
    assert str(path) in message
    return message


def test_missing_path(tmp_path):
    assert "no such file" in read_error(tmp_path / "nothing.nii.gz")


@pytest.mark.parametrize(
    "name, message",
    [
        # ITK reads these without complaint; the plugin's own check catches them.
        ("scan.nii.gz", "truncated"),
        ("scan.nii", "the file is truncated"),
        # ITK notices these; the plugin names the file and the format.
        ("scan.nrrd", "cannot be read as NRRD"),
        ("scan.mha", "cannot be read as MetaImage"),
    ],
)
def test_truncated_file(tmp_path, name, message):
    path = write_itk(tmp_path / name, ramp((20, 30, 40)))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    assert message in read_error(path)


def test_corrupt_compressed_nifti(tmp_path):
    path = write_itk(tmp_path / "scan.nii.gz", ramp((20, 30, 40)))
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(b ^ 0xFF for b in content[middle : middle + 64])
    path.write_bytes(bytes(content))
    assert "truncated or corrupt" in read_error(path)


@pytest.mark.parametrize("name", ["notes.nii", "notes.nii.gz"])
def test_text_file_renamed_nifti(tmp_path, name):
    path = tmp_path / name
    text = b"patient notes, not an image\n" * 40
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    assert "not a NIfTI file" in read_error(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    assert "not a volume format" in read_error(path)


def test_four_dimensional_volume_needs_a_time_point(tmp_path):
    series = np.stack([ramp() + 1000 * t for t in range(3)]).astype(np.int16)
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(series, isVector=False), str(path))
    message = read_error(path)
    assert "3 time points" in message and "index=N" in message
    np.testing.assert_array_equal(read_volume(path, index=2).data, series[2])
    assert "out of range" in read_error(path, index=3)


def test_rgb_volume_needs_a_channel(tmp_path):
    rgb = np.stack([ramp(dtype="uint8"), ramp(dtype="uint8") // 2, ramp(dtype="uint8") // 3], axis=-1)
    path = tmp_path / "photo.mha"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    assert "3 channels per voxel" in read_error(path)
    np.testing.assert_array_equal(read_volume(path, index=1).data, rgb[..., 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad):
    data = ramp(dtype="float32")
    data[2, 3, 4] = bad
    path = write_itk(tmp_path / "scan.nrrd", data)
    assert "1 of 594 voxels are NaN or infinite" in read_error(path)


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here")
    assert "no DICOM series" in read_error(folder)


def test_dicom_folder_with_a_missing_slice(tmp_path):
    folder = write_dicom_series(tmp_path / "gappy", ramp((8, 6, 7)), skip=(4,))
    message = read_error(folder)
    assert "not evenly spaced" in message and "5 mm" in message


def test_dicom_folder_with_two_series_lists_them_and_reads_the_chosen_one(tmp_path):
    folder = tmp_path / "mixed"
    first, second = ramp((5, 6, 7)), ramp((4, 6, 7)) * 2
    write_dicom_series(folder, first, series_uid="1.2.3.4.1111", description="arterial")
    write_dicom_series(folder, second, series_uid="1.2.3.4.2222", description="venous")
    message = read_error(folder)
    assert "2 DICOM series" in message
    assert "1.2.3.4.1111 (5 slices, CT, 'arterial')" in message
    assert "1.2.3.4.2222 (4 slices, CT, 'venous')" in message
    np.testing.assert_array_equal(read_volume(folder, series="1.2.3.4.2222").data, second)
    assert "no DICOM series with UID 9.9" in read_error(folder, series="9.9")


# -- writing -------------------------------------------------------------------------


def write_error(path, data, geometry) -> str:
    before = snapshot(path.parent)
    with pytest.raises(VolumeWriteError) as raised:
        write_volume(path, data, geometry)
    assert snapshot(path.parent) == before
    assert str(path) in str(raised.value)
    return str(raised.value)


def test_write_refuses_unknown_format_wrong_shape_missing_folder(tmp_path):
    data = np.zeros((2, 3, 4), np.uint8)
    assert "cannot write '.png'" in write_error(tmp_path / "mask.png", data, Geometry.identity(data.shape))
    assert "does not match the grid" in write_error(tmp_path / "mask.nrrd", data, Geometry.identity((2, 3, 5)))
    with pytest.raises(VolumeWriteError, match="does not exist"):
        write_volume(tmp_path / "missing" / "mask.nrrd", data, Geometry.identity(data.shape))


def test_write_refuses_to_overwrite_the_scan_itself(tmp_path):
    scan = read_volume(write_itk(tmp_path / "ct.nrrd", ramp()))
    message = write_error(tmp_path / "ct.nrrd", np.zeros(scan.data.shape, np.uint8), scan.geometry)
    assert "would overwrite it" in message


def test_interrupted_write_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "export.nii.gz"
    geometry = Geometry.identity((2, 3, 4), "uint8")
    write_volume(target, np.full((2, 3, 4), 7, np.uint8), geometry)
    before = target.read_bytes()

    def write_half_then_die(image, filename, *args, **kwargs):
        with open(filename, "wb") as partial:
            partial.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # the user closes the program mid-export

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_volume(target, np.zeros((2, 3, 4), np.uint8), geometry)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["export.nii.gz"]


def test_label_values_beyond_64_bit_integers(tmp_path):
    labels = np.zeros((2, 3, 4), np.float64)
    labels[0, 0, 0] = 1e20
    path = write_itk(tmp_path / "huge_seg.nrrd", labels)
    assert "do not fit in 64-bit integers" in read_error(path)
