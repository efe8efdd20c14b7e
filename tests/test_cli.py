import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import napari_fewshot
from conftest import start_cli, write_itk
from conftest import cli as run
from napari_fewshot.cli import main


def test_version_and_help():
    assert run("--version").stdout.strip() == f"napari-fewshot {napari_fewshot.__version__}"
    result = run("--help")
    assert result.returncode == 0 and "info" in result.stdout


def test_info_prints_geometry_and_reports_bad_files(tmp_path):
    path = write_itk(tmp_path / "ct.nrrd", np.full((3, 4, 5), -1000, np.int16), spacing=(0.5, 0.75, 2.0))
    result = run("info", str(path), str(tmp_path / "missing.nii"))
    assert result.returncode == 1
    assert "image (CT)" in result.stdout and "(0.5, 0.75, 2.0)" in result.stdout
    assert "shape (z, y, x): (3, 4, 5)" in result.stdout
    assert "missing.nii: no such file" in result.stderr


def test_segment_round_trips_files_with_geometry(tmp_path):
    from conftest import DIRECTIONS, dice, ellipsoids

    from napari_fewshot.io import read_volume

    image, truth = ellipsoids()
    support = np.zeros_like(truth)
    support[12] = truth[12]
    direction = DIRECTIONS["oblique"]
    image_path = write_itk(tmp_path / "scan.nrrd", image, spacing=(0.9, 0.9, 2.5), direction=direction)
    support_path = write_itk(tmp_path / "support.nii.gz", support, spacing=(0.9, 0.9, 2.5), direction=direction)
    output = tmp_path / "prediction.mha"
    result = run(
        "segment", "--image", str(image_path), "--support-labels", str(support_path), "--output", str(output),
        "--encoder", "tiny", "--head", "alpnet", "--device", "cpu", "--keep", "painted",
        "--probabilities", str(tmp_path / "probability_{label}.nii.gz"), "--names", "bright, dark",
        "--absent", "dark:20",  # the user says the dark one is not on slice 20, so neither past it
        "--no-disk-cache",  # other tests' runs saved this volume's features: here every slice is encoded
    )
    assert result.returncode == 0, result.stderr
    # the bar counts at most the scan's 24 slices (not a slice per structure and stage) and ends on them all
    assert "100% (24 of 24 slices)" in result.stderr and "of 48" not in result.stderr, result.stderr
    assert "label 1:" in result.stdout
    assert "of which encoding 24 slices" in result.stdout
    written, scan = read_volume(output, kind="labels"), read_volume(image_path)
    assert written.geometry.same_grid(scan.geometry) and written.data.dtype == np.uint8
    np.testing.assert_array_equal(written.data[12], support[12])
    assert dice(written.data == 1, truth == 1) > 0.85 and dice(written.data == 2, truth == 2) > 0.8
    assert not (written.data[20:] == 2).any() and (written.data[20:] == 1).any()
    probability = read_volume(tmp_path / "probability_2.nii.gz", kind="image")
    assert probability.data.dtype == np.float32 and probability.geometry.same_grid(scan.geometry)


def test_segment_reports_bad_input_without_writing(tmp_path, capsys):
    image = np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32)
    image_path = write_itk(tmp_path / "scan.nii.gz", image)
    empty = write_itk(tmp_path / "support.nii.gz", np.zeros((6, 16, 16), np.uint8))
    output = tmp_path / "out.nii.gz"
    common = ["--image", str(image_path), "--output", str(output), "--encoder", "tiny"]
    result = run("segment", "--support-labels", str(empty), *common)  # the command itself: exit status and stderr
    assert result.returncode == 1 and "no painted voxel" in result.stderr and "Traceback" not in result.stderr
    painted = np.zeros((6, 16, 16), np.uint8)
    painted[2, 4:8, 4:8] = 1
    painted[3, 4:8, 4:8] = 2
    support = write_itk(tmp_path / "support2.nii.gz", painted)
    shifted = write_itk(tmp_path / "support3.nii.gz", painted, origin=(0.0, 0.0, 0.0))
    for arguments, message in [  # the rest in this process (no second start of torch): the same main()
        ([*common, "--probabilities", str(tmp_path / "p.nii.gz")], "put {label} in the file name"),
        ([*common, "--absent", "liver:3"], "--absent liver:3: give a label value (or a name from --names)"),
        ([*common[:-1], "sam"], "unknown encoder 'sam'"),
        ([*common[:2], "--output", str(image_path), *common[4:]], "would overwrite it"),
        ([*common[:2], "--output", str(tmp_path / "out.dcm"), *common[4:]], "only for a scan read from a DICOM series"),
    ]:
        assert main(["segment", "--support-labels", str(support), *arguments]) == 1
        error = capsys.readouterr().err
        assert message in error and "segmenting" not in error, error  # refused before the work
    assert main(["segment", "--support-labels", str(shifted), *common]) == 1
    assert "is not on the grid of" in capsys.readouterr().err
    assert not output.exists() and not (tmp_path / "out.dcm").exists()


def test_segment_a_dicom_series_from_a_seg_support_to_a_seg(tmp_path):
    from conftest import ellipsoids, write_dicom_series

    from napari_fewshot.io import read_volume
    from napari_fewshot.io.dicom_seg import read_seg, write_seg

    image, truth = ellipsoids(shape=(12, 32, 32))
    folder = write_dicom_series(tmp_path / "ct", image.astype(np.int16), descending=True)
    scan = read_volume(folder)
    support = np.zeros_like(truth)
    support[6] = truth[6]
    support_seg = write_seg(tmp_path / "support.dcm", support, scan.geometry, scan.dicom, {1: "bright", 2: "dark"})
    support_nifti = write_itk(tmp_path / "support.nii.gz", support, scan.geometry.spacing, scan.geometry.origin)
    common = ["segment", "--image", str(folder), "--encoder", "tiny", "--head", "alpnet", "--device", "cpu"]
    result = run(*common, "--support-labels", str(support_seg), "--output", str(tmp_path / "mask.dcm"))
    assert result.returncode == 0 and "mask.dcm: label 1:" in result.stdout, result.stderr
    result = run(*common, "--support-labels", str(support_nifti), "--output", str(tmp_path / "mask.nii.gz"),
                 "--names", "bright, dark")
    assert result.returncode == 0, result.stderr
    seg, names = read_seg(tmp_path / "mask.dcm", scan.geometry, scan.dicom)
    assert names == {1: "bright", 2: "dark"}  # the SEG support's names, whether found or not
    nifti = read_volume(tmp_path / "mask.nii.gz", kind="labels")
    assert nifti.data.any() and nifti.geometry.same_grid(scan.geometry)
    np.testing.assert_array_equal(seg.data, nifti.data)


def test_an_image_given_as_the_support_labels_is_refused_before_any_work(tmp_path, capsys):
    image = np.random.default_rng(0).normal(size=(6, 16, 16)).astype(np.float32)
    image_path = write_itk(tmp_path / "scan.nii.gz", image)
    labels = write_itk(tmp_path / "mr.nii.gz", np.arange(image.size).reshape(image.shape).astype(np.int16) % 354)
    assert main(["segment", "--image", str(image_path), "--support-labels", str(labels), "--encoder", "sam",
                 "--output", str(tmp_path / "out.nii.gz")]) == 1  # refused before the encoder is looked up
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the support labels hold 353 distinct values") and "\n" not in error
    assert "looks like an image, not a label map" in error and not (tmp_path / "out.nii.gz").exists()


def _status(pid: int) -> tuple[bool, bool]:
    """Whether process ``pid`` has its SIGTERM handler in place, and whether it has loaded torch's library yet."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1), "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="tells from /proc when the command has started")
@pytest.mark.parametrize(("how", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_command_imports_torch_ends_it_with_one_line(tmp_path, how, status):
    process = start_cli("info", str(tmp_path / "scan.nii.gz"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while process.poll() is None and not _status(process.pid)[0]:
        time.sleep(0.005)
    assert not _status(process.pid)[1]  # the signal comes before torch is loaded
    process.send_signal(how)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out) == (status, "")
    assert err.strip().splitlines() == ["interrupted: no output was left half-written (an interrupted train or "
                                        "refine run resumes from its last checkpoint when run again)"]
