"""NIfTI headers ITK would read wrongly, or crash on, are refused naming the field and the fix (io/nifti.py).

Each file is written by SimpleITK, then one or two header fields are patched
(the NIfTI-1 header is 348 bytes; the offsets are the fuzzer's).
"""

import struct

import numpy as np
import pytest

from conftest import DIRECTIONS, ORIGIN, ramp, write_itk
from fuzz_readers import NIFTI_FIELDS
from napari_fewshot.io import VolumeReadError, read_volume

NAN = float("nan")


def patch(path, **fields):
    """Set NIfTI-1 header fields (names of :data:`fuzz_readers.NIFTI_FIELDS`) of the file ``path``."""
    content = bytearray(path.read_bytes())
    for field, value in fields.items():
        offset, fmt = NIFTI_FIELDS[field]
        struct.pack_into("<" + fmt, content, offset, value)
    path.write_bytes(bytes(content))
    return path


def nifti(tmp_path, data=None, **fields):
    """A ``.nii`` of :func:`ramp` (or ``data``) on an oblique, mirrored grid, with ``fields`` patched."""
    path = write_itk(tmp_path / "scan.nii", ramp() if data is None else data, direction=DIRECTIONS["oblique"])
    return patch(path, **fields)


def refusal(path) -> str:
    with pytest.raises(VolumeReadError) as raised:
        read_volume(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)
    return str(raised.value)


@pytest.mark.parametrize("field", ["qoffset_x", "qoffset_z", "quatern_d"])
@pytest.mark.parametrize("sform_code", [0, 2])
def test_a_nan_qform_is_refused_naming_the_field(tmp_path, field, sform_code):
    # ITK read a NaN qoffset as 0 mm and a NaN quatern_d as a flipped direction, without a word.
    path = nifti(tmp_path, **{field: NAN, "sform_code": sform_code})
    message = refusal(path)
    assert f"the NIfTI header is corrupt: {field} is NaN or infinite" in message and "Copy or export it" in message


def test_a_nan_qform_beside_a_scanner_sform_reads_the_sform(tmp_path):
    # sform_code 1 (scanner): ITK, like nibabel, takes the sform; the broken qform is not used.
    volume = read_volume(nifti(tmp_path, qoffset_x=NAN, quatern_d=NAN, sform_code=1))
    np.testing.assert_allclose(volume.geometry.origin, ORIGIN, atol=1e-3)
    np.testing.assert_allclose(volume.geometry.direction_matrix, DIRECTIONS["oblique"], atol=1e-5)


def test_a_nan_sform_is_refused_naming_the_field(tmp_path):
    assert "srow_z is NaN or infinite" in refusal(nifti(tmp_path, srow_z2=float("inf")))


def test_datatype_and_bitpix_that_disagree_are_refused_naming_both(tmp_path):
    # int64 voxels by datatype, 16 bits by bitpix: ITK read 3/4 of the voxels from beyond the file.
    message = refusal(nifti(tmp_path, datatype=1024))
    assert "datatype 1024 (int64) has 64 bits per voxel but bitpix says 16" in message


def test_a_one_dimensional_array_is_refused_as_not_an_image(tmp_path):
    path = nifti(tmp_path, dim0=1, dim1=ramp().size, dim2=1, dim3=1)
    message = refusal(path)  # ITK said "The maximum supported IO dimension is 5"
    assert "holds a 1-D array (its NIfTI header says dim[0] = 1), not an image" in message
    assert "needs a 3-D volume" in message


def test_a_sheared_sform_is_refused_with_the_resample_fix(tmp_path):
    # ITK fell back to the qform, dropping the shear (a gantry tilt) without a word.
    message = refusal(nifti(tmp_path, srow_y2=1.5))
    assert "not perpendicular" in message and "Resample the scan onto a rectangular grid" in message


@pytest.mark.parametrize("intent_code", [0, 1007])
def test_complex_voxels_are_refused_asking_for_the_magnitude(tmp_path, intent_code):
    # With the vector intent (1007) ITK corrupted its memory (the process aborted); without, it said "2 channels".
    data = (ramp() + 1j * ramp()[::-1]).astype(np.complex64)
    message = refusal(nifti(tmp_path, data, intent_code=intent_code))
    assert "the voxels are complex numbers (NIfTI datatype 32, complex64)" in message
    assert "needs a magnitude image: export the magnitude" in message


def test_rgb_voxels_with_a_vector_intent_are_refused_not_a_crash(tmp_path):
    rgb = np.stack([ramp(dtype="uint8")] * 3, axis=-1)
    path = tmp_path / "photo.nii"
    path.write_bytes(patch(nifti(tmp_path, ramp(dtype="uint8")), datatype=128, bitpix=24).read_bytes()[:352]
                     + rgb.tobytes())
    assert "the image has 3 channels per voxel" in refusal(path)  # a plain RGB image reads (one channel at a time)
    assert "datatype 128 (RGB24) with intent_code 1007 (vector)" in refusal(patch(path, intent_code=1007))
