"""Bad input gives an error naming the file and the problem, and changes nothing on disk."""

import bz2
import gzip
import os
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import cli, ramp, write_dicom_series, write_itk
from napari_fewshot.io import Geometry, VolumeReadError, VolumeWriteError, read_volume, write_volume
from napari_fewshot.io.read import LabelMapWarning


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
    assert "cannot be looked up (File name too long)" in read_error(tmp_path / ("a" * 300 + ".nii.gz"))


@pytest.mark.parametrize(
    "name, message",
    [
        # ITK reads NIfTI ones without complaint (and says "No such file" of a MetaImage one);
        # the plugin's own checks of the length against the header catch them.
        ("scan.nii.gz", "truncated"),
        ("scan.nii", "the file is truncated"),
        ("scan.nrrd", "the file is truncated"),
        ("scan.mha", "the file is truncated"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file(tmp_path, name, message, compress):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(ramp((20, 30, 40))), str(path), useCompression=compress)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])
    if compress and name.endswith(".nrrd"):  # ITK's own message says it, once it has decompressed the stream
        message = "corrupt, truncated, or not a NRRD file): [nrrd] _nrrdEncodingGzip_read: expected 48000 bytes"
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


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.mha", "scan.nii", "scan.nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_voxels(tmp_path, bad, name):
    # ITK reads NaN and infinity in a NIfTI file as 0; the plugin counts the raw values.
    data = ramp(dtype="float64" if name.endswith("gz") else "float32")
    data[2, 3, 4] = bad
    path = write_itk(tmp_path / name, data)
    assert "1 of 594 voxels are NaN or infinite" in read_error(path)


def test_uncompressed_nifti_named_gz_is_called_misnamed(tmp_path):
    plain = write_itk(tmp_path / "scan.nii", ramp())
    path = plain.rename(tmp_path / "scan.nii.gz")
    assert "not gzip-compressed: it holds an uncompressed NIfTI image. Rename it to .nii" in read_error(path)


def metaimage_header(path, **changes) -> bytes:
    """A MetaImage file of :func:`ramp` with header lines ``key = value`` replaced."""
    write_itk(path, ramp())
    header, data = path.read_bytes().split(b"ElementDataFile = LOCAL\n")
    changes.setdefault("ElementDataFile", "LOCAL")
    lines = [line for line in header.split(b"\n") if line] + [b"ElementDataFile = LOCAL"]
    for key, value in changes.items():
        lines = [f"{key} = {value}".encode() if line.startswith(key.encode() + b" ") else line for line in lines]
    path.write_bytes(b"\n".join(lines) + b"\n" + data)
    return path


def test_metaimage_with_a_bad_ndims_is_refused_not_a_crash(tmp_path):
    # ITK dies of a segmentation fault on these: the reader runs in a child process to see that it does not.
    values = ["-1", "0", "65535", "3.5"]
    paths = [metaimage_header(tmp_path / f"scan{i}.mha", NDims=ndims) for i, ndims in enumerate(values)]
    result = cli("info", *map(str, paths), timeout=60)
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(values) and "Traceback" not in result.stderr
    for path, ndims, error in zip(paths, values, errors):
        assert str(path) in error and (f"NDims {ndims};" in error or f"'NDims' is '{ndims}'" in error)
        assert "copy or export it again" in error.lower()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"DimSize": "9 11"}, "'DimSize' is '9 11', not 3 whole number(s)"),
        ({"ElementType": "MET_STRING"}, "ElementType 'MET_STRING' is not one"),
        ({"DimSize": "100000 100000 100000"}, "the header announces 2000000000000000 bytes"),
        ({"ElementDataFile": "missing.raw"}, "the data file 'missing.raw'"),
    ],
)
def test_metaimage_header_checked_before_itk_reads(tmp_path, changes, message):
    path = metaimage_header(tmp_path / "scan.mha", **changes)
    assert message in read_error(path)


@pytest.mark.parametrize(
    "encoding, compress, message",
    [
        ("raw", bytes, "the header announces 2147483648 bytes of voxels, and the 4096 bytes of data cannot hold them"),
        ("gzip", gzip.compress, "the header announces 2147483648 bytes of voxels"),
        # ITK's NRRD reader has no bzip2: it allocated the 2 GB the header claims before saying so.
        ("bzip2", bz2.compress, "the NRRD encoding 'bzip2' is not one napari-fewshot reads"),
    ],
)
def test_nrrd_header_claiming_gigabytes_is_refused_before_reading(tmp_path, encoding, compress, message):
    # 4 KB of data whose header claims 2 GB: ITK would allocate and touch it all before failing.
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: {encoding}\n"
              "endian: little\n\n").encode()
    path = tmp_path / "scan.nrrd"
    path.write_bytes(header + compress(bytes(4096)))
    assert message in read_error(path)


def test_sheared_or_absurd_directions_are_refused_with_the_fix(tmp_path):
    # A gantry-tilted CT is stored with slice positions sheared along y: the axes are not perpendicular.
    tilt = np.deg2rad(15.0)
    shear = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(tilt)], [0.0, 0.0, np.cos(tilt)]])
    tilted = [write_itk(tmp_path / name, ramp(), direction=shear) for name in ("tilted.nrrd", "tilted.mha")]
    # ITK's MetaImage reader loops forever on a TransformMatrix entry of 1e308.
    absurd = [metaimage_header(tmp_path / f"absurd-{value}.mha", TransformMatrix=f"1 0 0 {value} 1 0 0 0 1")
              for value in ("1e308", "nan")]
    result = cli("info", *map(str, tilted + absurd), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4
    for error in errors[:2]:
        assert "not perpendicular" in error and "Resample the scan onto a rectangular grid" in error
    assert all("the file's geometry is invalid" in error for error in errors[2:])


def test_pipe_named_like_a_volume_is_refused_without_blocking(tmp_path):
    path = tmp_path / "scan.nii"
    os.mkfifo(path)
    result = cli("info", str(path), timeout=30)  # reading a pipe nobody writes to would block forever
    assert result.returncode == 1 and "not a regular file" in result.stderr


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


def test_complex_voxels_are_refused_with_the_fix(tmp_path):
    # NRRD: ITK reads the complex voxels, then read_volume refuses them (tests/test_nifti.py: NIfTI, refused before).
    data = (ramp() + 1j * ramp()).astype(np.complex64)
    path = write_itk(tmp_path / "phase.nrrd", data)
    result = cli("info", str(path), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "complex numbers (complex64)" in result.stderr and "needs a magnitude image" in result.stderr


def test_a_scan_named_like_a_mask_opens_as_an_image(tmp_path):
    # Named like a label map, but negative and thousands of values: a CT.
    ct = write_itk(tmp_path / "liver_mask_ct.nii.gz", ramp((6, 30, 40)))
    mask = write_itk(tmp_path / "liver_mask.nii.gz", (ramp() > 0).astype(np.uint8) * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither warns
        assert not read_volume(ct).is_label_map
        assert read_volume(mask).is_label_map
    with pytest.warns(LabelMapWarning, match=r"looks like an image, not labels: it holds negative values "
                                             r"\(down to -200\) and at least 7200 distinct values"):
        assert read_volume(ct, kind="labels").is_label_map  # asked for, it is one, with a warning


def test_an_unknown_kind_is_refused(tmp_path):
    path = write_itk(tmp_path / "scan.nrrd", ramp())
    assert "kind must be one of 'auto', 'image', 'labels'; got 'mask'" in read_error(path, kind="mask")


def test_half_floats_are_written_as_float32(tmp_path):
    data = np.linspace(-2, 2, 24, dtype=np.float16).reshape(2, 3, 4)
    path = write_volume(tmp_path / "probability.nii.gz", data, Geometry.identity(data.shape))
    written = read_volume(path)
    assert written.data.dtype == np.float32 and np.array_equal(written.data, data.astype(np.float32))
    assert "cannot write voxels of type complex64" in write_error(
        tmp_path / "c.nii.gz", data.astype(np.complex64), Geometry.identity(data.shape)
    )
