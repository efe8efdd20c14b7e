"""DICOM SEG of a scan read from a DICOM series: written with highdicom, checked with pydicom, read back."""

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from conftest import cli, ramp, rotation, write_dicom_series, write_itk
from test_dicom import CT_IMAGE_STORAGE, SERIES_UID, ct_series
from napari_fewshot import __version__
from napari_fewshot.io import VolumeReadError, VolumeWriteError, read_volume, write_volume
from napari_fewshot.io.anatomy import anatomy_codes, normalise
from napari_fewshot.io.dicom_seg import (
    SEG_SOP_CLASS_UID,
    check_seg_writable,
    find_source_series,
    is_seg_file,
    read_seg,
    write_seg,
)

SHAPE = (7, 10, 12)
#: Series as scanners store them: axial, acquired head down (instances against position), oblique.
SERIES = {
    "axial": {},
    "descending": {"descending": True},
    "oblique": {"direction": rotation(2, 17.0) @ rotation(0, -9.0)},
}


def labels_of(shape, values: tuple[int, ...]) -> np.ndarray:
    """A label map with a block of each value on slices 1-2 and 4 (slices 0, 3, 5, 6 empty)."""
    labels = np.zeros(shape, np.uint8)
    for i, value in enumerate(values):
        labels[1:3, 2 + 3 * i : 4 + 3 * i, 3:9] = value
        labels[4, 1 + 3 * i, 2 + i] = value
    return labels


@pytest.fixture(params=list(SERIES))
def series(request, tmp_path):
    """A DICOM series written by the test, read back: (folder, volume)."""
    folder = write_dicom_series(tmp_path / request.param, ramp(SHAPE), **SERIES[request.param])
    return folder, read_volume(folder)


@pytest.mark.parametrize(
    "values, names",
    [((1,), {1: "liver"}), ((1, 3), {1: "Kidney_Left", 3: "tumour rim", 4: "spleen"})],
    ids=["one", "several"],
)
def test_seg_frames_reference_the_source_slices_they_lie_on(series, tmp_path, values, names):
    folder, scan = series
    labels = labels_of(scan.data.shape, values)
    path = write_seg(tmp_path / "mask.dcm", labels, scan.geometry, scan.dicom, names)
    segment_names = {v: names.get(v, f"structure {v}") for v in range(1, max(names) + 1)}  # segment v = label v

    seg = pydicom.dcmread(path)
    first_source = pydicom.dcmread(scan.dicom.files[0])
    assert seg.SOPClassUID == SEG_SOP_CLASS_UID and seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert seg.get(keyword) == first_source.get(keyword)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == scan.dicom.series_uid
    segments = seg.SegmentSequence
    assert {s.SegmentNumber: s.SegmentLabel for s in segments} == segment_names
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("napari-fewshot", __version__)
    assert {s.SegmentAlgorithmType for s in segments} == {"SEMIAUTOMATIC"}

    # every frame: the source slice it references, at that slice's position, holding that slice's labels
    by_uid = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, folder.iterdir())}
    pixels = seg.pixel_array.reshape(-1, *SHAPE[1:])
    frames = set()
    for frame, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = by_uid[reference]
        assert group.PlanePositionSequence[0].ImagePositionPatient == source.ImagePositionPatient
        k = (int(source.pixel_array[0, 0]) - int(ramp(SHAPE)[0, 0, 0])) // (SHAPE[1] * SHAPE[2])  # ramp: slice k
        identification = group if "SegmentIdentificationSequence" in group else seg.SharedFunctionalGroupsSequence[0]
        value = identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(pixels[frame], labels[k] == value)
        frames.add((k, value))
    assert frames == {(k, v) for k in range(SHAPE[0]) for v in values if (labels[k] == v).any()}  # no empty frame

    # highdicom reads the same segments back; the plugin reads the labels on the series' grid
    parsed = hd.seg.segread(path)
    assert parsed.get_segment_description(1).segment_label == names[1]
    back, back_names = read_seg(path, scan.geometry, scan.dicom)
    assert back_names == segment_names
    assert back.is_label_map and back.geometry.same_grid(scan.geometry)
    np.testing.assert_array_equal(back.data, labels)
    # the same voxels as the NIfTI export of those labels
    nifti = write_volume(tmp_path / "mask.nii.gz", labels, scan.geometry.with_pixel_type("uint8"))
    np.testing.assert_array_equal(back.data, read_volume(nifti, kind="labels").data)


def test_known_organ_names_are_coded_others_described():
    assert normalise(" Kidney_Left ") == "kidney" and normalise("inferior-vena  cava") == "inferior vena cava"
    category, kind = anatomy_codes("Liver")
    assert (category.value, kind.value, kind.scheme_designator) == ("91723000", "10200004", "SCT")
    assert anatomy_codes("kidney_right")[1].meaning == "Kidney"
    for name in ("liver tumour", "lesion 3", "structure 2"):
        assert [code.meaning for code in anatomy_codes(name)] == ["Tissue", "Tissue"]


def test_seg_written_into_its_series_folder_is_found_and_leaves_the_folder_readable(tmp_path):
    study = tmp_path / "study"
    folder = write_dicom_series(study / "ct", ramp(SHAPE))
    scan = read_volume(folder)
    inside = write_seg(folder / "liver.dcm", labels_of(SHAPE, (1,)), scan.geometry, scan.dicom, {1: "liver"})
    beside = write_seg(study / "liver.dcm", labels_of(SHAPE, (1,)), scan.geometry, scan.dicom, {1: "liver"})
    assert is_seg_file(inside) and not is_seg_file(scan.dicom.files[0]) and not is_seg_file(tmp_path)
    np.testing.assert_array_equal(read_volume(folder).data, scan.data)  # the SEG is not a second series
    assert find_source_series(inside) == find_source_series(beside) == (folder, scan.dicom.series_uid)
    elsewhere = tmp_path / "downloads" / "liver.dcm"
    elsewhere.parent.mkdir()
    shutil.copy(beside, elsewhere)
    with pytest.raises(VolumeReadError, match="Open that series first"):
        find_source_series(elsewhere)


def test_refusals_name_the_problem_and_write_nothing(tmp_path):
    folder = write_dicom_series(tmp_path / "ct", ramp(SHAPE))
    scan = read_volume(folder)
    labels = labels_of(SHAPE, (1,))

    nifti = tmp_path / "scan.nii.gz"
    write_volume(nifti, scan.data, scan.geometry)
    from_file = read_volume(nifti)
    with pytest.raises(VolumeWriteError, match=r"only for a scan read from a DICOM series.*\.nii\.gz, \.nii, \.nrrd, \.mha"):
        write_seg(tmp_path / "a.dcm", labels, from_file.geometry, from_file.dicom, {})
    with pytest.raises(VolumeWriteError, match="cannot write '.dcm' as a volume"):
        write_volume(tmp_path / "a.dcm", labels, scan.geometry)
    with pytest.raises(VolumeWriteError, match="label map is empty"):
        write_seg(tmp_path / "a.dcm", np.zeros_like(labels), scan.geometry, scan.dicom, {})
    with pytest.raises(VolumeWriteError, match="also an input"):
        write_seg(scan.dicom.files[2], labels, scan.geometry, scan.dicom, {})

    changed = pydicom.dcmread(scan.dicom.files[3])
    changed.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.9.9"
    changed.save_as(tmp_path / "changed.dcm")
    original = Path(scan.dicom.files[3]).read_bytes()
    Path(scan.dicom.files[3]).write_bytes((tmp_path / "changed.dcm").read_bytes())
    with pytest.raises(VolumeWriteError, match="has changed since the scan was opened.*Open the series again"):
        write_seg(tmp_path / "a.dcm", labels, scan.geometry, scan.dicom, {})
    Path(scan.dicom.files[3]).write_bytes(original)
    (tmp_path / "changed.dcm").unlink()

    moved = tmp_path / "moved"
    folder.rename(moved)
    with pytest.raises(VolumeWriteError, match=r"no longer where it was: 7 of its 7 slice files are missing"):
        write_seg(tmp_path / "a.dcm", labels, scan.geometry, scan.dicom, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "scan.nii.gz"]


def test_a_seg_of_another_series_or_grid_is_refused(tmp_path):
    folder = write_dicom_series(tmp_path / "ct", ramp(SHAPE))
    scan = read_volume(folder)
    path = write_seg(tmp_path / "mask.dcm", labels_of(SHAPE, (1, 2)), scan.geometry, scan.dicom, {1: "a", 2: "b"})

    other = read_volume(write_dicom_series(tmp_path / "other", ramp(SHAPE), series_uid="1.2.826.0.1.3680043.2.1125.2.2"))
    with pytest.raises(VolumeReadError, match=r"made on DICOM series 1\.2\.826\.0\.1\.3680043\.2\.1125\.1\.1, not on"):
        read_seg(path, other.geometry, other.dicom)
    # the same series UIDs on a shifted grid (re-exported with another origin): its frames lie off the slices
    shifted = read_volume(write_dicom_series(tmp_path / "shifted", ramp(SHAPE), origin=(-45.0, -60.0, 100.0)))
    with pytest.raises(VolumeReadError, match="frames do not match the slices.*lie off the scan's slices"):
        read_seg(path, shifted.geometry, shifted.dicom)
    # fewer slices: frames that reference instances the series does not hold
    shorter = read_volume(write_dicom_series(tmp_path / "shorter", ramp(SHAPE)[:2]))
    with pytest.raises(VolumeReadError, match="do not match a slice of series"):
        read_seg(path, shorter.geometry, shorter.dicom)
    with pytest.raises(VolumeReadError, match="not a DICOM SEG file"):
        read_seg(scan.dicom.files[0], scan.geometry, scan.dicom)


def test_a_seg_with_overlapping_segments_is_refused(tmp_path):
    from napari_fewshot.io.dicom_seg import _segment

    folder = write_dicom_series(tmp_path / "ct", ramp(SHAPE))
    scan = read_volume(folder)
    stacked = np.zeros((*SHAPE, 2), np.uint8)  # a segmentation made elsewhere: two segments, one voxel in both
    stacked[2, 3, 3:5, 0] = 1
    stacked[2, 3, 4:6, 1] = 1
    seg = hd.seg.Segmentation(
        [pydicom.dcmread(f, stop_before_pixels=True) for f in scan.dicom.files], stacked, "BINARY",
        [_segment(1, "liver"), _segment(2, "tumour")], hd.UID(), 1, hd.UID(), 1, "other", "other", "1", "1",
    )
    seg.save_as(tmp_path / "overlap.dcm")
    with pytest.raises(VolumeReadError, match="segments overlap.*one structure per voxel"):
        read_seg(tmp_path / "overlap.dcm", scan.geometry, scan.dicom)


@pytest.mark.parametrize("variant", ["blank-uids", "no-file-meta", "anonymised"])
def test_seg_of_a_series_as_archives_store_it_reads_back_with_names_in_any_script(tmp_path, variant):
    folder = ct_series(tmp_path / variant, variant)
    stored = {p.name: p.read_bytes() for p in folder.iterdir()}
    scan = read_volume(folder)
    labels = labels_of(scan.data.shape, (1, 2))
    names = {1: "肝臓", 2: "Milz (Röntgen)"}
    path = write_seg(tmp_path / "mask.dcm", labels, scan.geometry, scan.dicom, names)

    back, back_names = read_seg(path, scan.geometry, scan.dicom)
    assert back_names == names and back.geometry.same_grid(scan.geometry)
    np.testing.assert_array_equal(back.data, labels)
    seg = pydicom.dcmread(path)
    assert seg.SpecificCharacterSet == "ISO_IR 192" and seg.SegmentSequence[0].SegmentLabel == "肝臓"
    assert {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        f"{SERIES_UID}.{k + 1}" for k in range(6)}
    assert {item.ReferencedSOPClassUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        CT_IMAGE_STORAGE}
    kept = ("", "", "", "", "") if variant == "anonymised" else ("fewshot-1", "Test^Patient", "1", "A1", "20240101")
    assert (seg.PatientID, seg.PatientName, seg.StudyID, seg.AccessionNumber, seg.StudyDate) == kept
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == stored  # the series' files untouched


def test_a_seg_that_cannot_be_written_is_refused_before_and_a_slice_changed_during_the_run_after(tmp_path):
    bare = read_volume(ct_series(tmp_path / "bare", "no-instance-uids"))
    with pytest.raises(VolumeWriteError, match=r"IM0006.dcm holds no SOP Instance UID \(0008,0018\), in its dataset "
                                               r"or its file meta \(6 of 6 slices\).*write the mask as \.nii\.gz"):
        check_seg_writable(tmp_path / "bare.dcm", bare.geometry, bare.dicom)

    folder = ct_series(tmp_path / "ct")
    scan = read_volume(folder)
    assert check_seg_writable(tmp_path / "mask.dcm", scan.geometry, scan.dicom) == tmp_path / "mask.dcm"
    (folder / "IM0004.dcm").write_text("replaced while the scan was being segmented")
    replaced = r"IM0004.dcm, a slice of the DICOM series .* can no longer be read as DICOM: it was replaced or damaged"
    with pytest.raises(VolumeWriteError, match=replaced + r".*Keep the series unchanged until the mask is .*nii"):
        write_seg(tmp_path / "mask.dcm", labels_of(scan.data.shape, (1,)), scan.geometry, scan.dicom, {1: "liver"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "ct"]


def test_segment_refuses_a_seg_output_it_cannot_write_before_the_run(tmp_path):
    folder = ct_series(tmp_path / "ct", "no-instance-uids")
    scan = read_volume(folder)
    support = np.zeros(scan.data.shape, np.uint8)
    support[3, 4:9, 4:9] = 1
    support_file = write_itk(tmp_path / "support.nii.gz", support, scan.geometry.spacing, scan.geometry.origin)
    result = cli("segment", "--image", str(folder), "--support-labels", str(support_file), "--encoder", "tiny",
                 "--device", "cpu", "--output", str(tmp_path / "seg.dcm"), timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(errors) == 1 and "segmenting" not in result.stderr, result.stderr
    assert "holds no SOP Instance UID" in errors[0] and "write the mask as .nii.gz" in errors[0]
    assert not (tmp_path / "seg.dcm").exists()
