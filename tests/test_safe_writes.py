"""Writing never loses a file: a full disk, outputs that name inputs, read-only folders, stale partial files.

The full disk is a real one where this process may mount a filesystem: a small
tmpfs (as root, as these tests usually run).  Elsewhere it falls back to a
write-limit shim, RLIMIT_FSIZE, under which the kernel cuts every write short
at the limit (EFBIG), the way a full disk cuts it short (ENOSPC).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conftest import FREE, cli, cli_obeying_permissions, ellipsoids, ramp, write_itk
from napari_fewshot._napari.export import export_labels
from napari_fewshot.cli import main
from napari_fewshot._napari.layers import volume_layer_data
from napari_fewshot.io import Geometry, VolumeWriteError, read_volume, write_volume, write_volumes

def noise(shape=(8, 64, 64), dtype="float32") -> np.ndarray:
    """Incompressible voxels: compressed or not, far more than :data:`FREE` bytes."""
    return np.random.default_rng(0).integers(0, 250, shape).astype(dtype)


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii", "mask.nrrd", "mask.mha"])
def test_full_disk_keeps_the_previous_file(small_disk, name):
    target = small_disk.folder / name
    geometry = Geometry.identity((8, 64, 64), "float32")
    write_volume(target, np.zeros(geometry.shape, np.float32), geometry)
    before = target.read_bytes()
    with small_disk.full(), pytest.raises(VolumeWriteError) as raised:
        write_volume(target, noise(), geometry)
    assert str(target) in str(raised.value) and "nothing was changed" in str(raised.value).lower()
    assert target.read_bytes() == before
    assert small_disk.names() == [name]


def test_volumes_written_together_are_all_or_none(small_disk):
    # The second volume does not fit: the first, which does, must not replace its old file either.
    geometry = Geometry.identity((8, 64, 64), "float32")
    small, large = small_disk.folder / "mask.nii.gz", small_disk.folder / "probability.nii.gz"
    for path in (small, large):
        write_volume(path, np.ones(geometry.shape, np.float32), geometry)
    before = {path: path.read_bytes() for path in (small, large)}
    with small_disk.full(), pytest.raises(VolumeWriteError, match="probability.nii.gz"):
        write_volumes([(small, np.zeros(geometry.shape, np.float32), geometry), (large, noise(), geometry)])
    assert {path: path.read_bytes() for path in (small, large)} == before
    assert small_disk.names() == ["mask.nii.gz", "probability.nii.gz"]


@pytest.mark.parametrize(("new_mask", "names", "message"), [
    ("noise", {1: "liver"}, "is the disk full"),  # the new mask does not fit
    ("ones", {1: "liver " * 4000}, "liver.json"),  # the mask fits, its sidecar (a long name) does not: both or neither
])
def test_widget_export_on_a_full_disk_keeps_the_previous_mask_and_sidecar(small_disk, tmp_path, new_mask, names, message):
    scan = read_volume(write_itk(tmp_path / "ct.nrrd", ramp((8, 64, 64))))
    _, attributes, _ = volume_layer_data(scan)
    target = small_disk.folder / "liver.nii.gz"
    export_labels(target, np.zeros(scan.data.shape, np.uint8), attributes, {1: "liver"})
    before = {p.name: p.read_bytes() for p in small_disk.folder.iterdir()}
    labels = noise(scan.data.shape, "uint8") if new_mask == "noise" else np.ones(scan.data.shape, np.uint8)
    with small_disk.full(), pytest.raises(VolumeWriteError, match=message):
        export_labels(target, labels, attributes, names)
    assert {p.name: p.read_bytes() for p in small_disk.folder.iterdir() if p.name != "filler"} == before


def test_a_checkpoint_on_a_full_disk_fails_with_the_reason_and_keeps_the_last_one(small_disk):
    # torch reports a short write as its own RuntimeError; the run's last checkpoint must survive it.
    import torch

    from napari_fewshot.train.runs import save_checkpoint

    path = small_disk.folder / "checkpoint.pt"
    save_checkpoint(path, {"seed": 0}, 1, {"weights": torch.zeros(10)}, [])
    before = path.read_bytes()
    with small_disk.full(), pytest.raises(VolumeWriteError, match="checkpoint.pt: could not be written"):
        save_checkpoint(path, {"seed": 0}, 2, {"weights": torch.rand(100_000)}, [])
    assert path.read_bytes() == before and small_disk.names() == ["checkpoint.pt"]


def test_a_full_disk_stops_a_run_at_its_log_with_the_reason(small_disk):
    from napari_fewshot.train.runs import append_log

    log = small_disk.folder / "run" / "log.jsonl"
    with small_disk.full(), pytest.raises(VolumeWriteError, match=r"log.jsonl: could not be written \((No space left "
                                          r"on device|File too large)\); the run stopped. .* it resumes from its last"):
        append_log(log, {"step": 1, "note": "x" * 4 * FREE})  # more than the disk holds


def test_names_too_long_for_the_file_system_are_refused_and_long_ones_written(tmp_path, capsys):
    image, support = segment_files(tmp_path, shape=(6, 16, 16))
    long = tmp_path / ("a" * 293 + ".nii.gz")  # 300 bytes: past the 255 a name may have
    assert main(["segment", "--image", str(image), "--support-labels", str(support), "--encoder", "tiny",
                 "--output", str(long)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "segmenting" not in error
    assert "is 300 bytes long, and a file system takes at most 255 bytes per name; choose a shorter name" in error
    assert main(["train", "--images", str(image), "--out", str(long / "run"), "--encoder", "tiny"]) == 1
    assert "is 300 bytes long" in capsys.readouterr().err
    with pytest.raises(VolumeWriteError, match="is 300 bytes long"):
        write_volume(long, np.zeros((2, 3, 4), np.uint8), Geometry.identity((2, 3, 4), "uint8"))
    fits = tmp_path / ("b" * 238 + ".nii.gz")  # 245 bytes: its temporary files' names are cut short, not refused
    # a killed write's temporary file: the name cut to 222 bytes, so that with the process id, the random part and
    # ".partial.nii.gz" the whole is at most 255
    (tmp_path / f".{'b' * 222}.{2**22 + 7}-k1llx9.partial.nii.gz").write_bytes(b"left by a killed write of it")
    write_volume(fits, np.ones((2, 3, 4), np.uint8), Geometry.identity((2, 3, 4), "uint8"))
    assert read_volume(fits, kind="labels").data.sum() == 24
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def segment_files(folder, shape=(24, 48, 48)):
    """A scan and a support with a square painted on its middle slice."""
    image = ellipsoids(shape)[0]
    support = np.zeros(shape, np.uint8)
    support[shape[0] // 2, shape[1] // 3 : 2 * shape[1] // 3, shape[2] // 3 : 2 * shape[2] // 3] = 1
    return write_itk(folder / "scan.nii.gz", image), write_itk(folder / "painted.nii.gz", support)


def test_segment_on_a_full_disk_fails_and_keeps_the_previous_outputs(small_disk, tmp_path):
    image, support = segment_files(tmp_path)
    output, probabilities = small_disk.folder / "mask.nii", small_disk.folder / "probability.nii.gz"
    common = ["segment", "--image", str(image), "--support-labels", str(support), "--encoder", "tiny",
              "--device", "cpu", "--output", str(output), "--probabilities", str(probabilities)]
    first = cli(*common)
    assert first.returncode == 0, first.stderr
    before = {path: path.read_bytes() for path in (output, probabilities)}
    result = small_disk.run_full(*common, "--threshold", "0.3")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is the disk full" in result.stderr or "No space left" in result.stderr or "too large" in result.stderr
    assert {path: path.read_bytes() for path in (output, probabilities)} == before
    assert small_disk.names() == ["mask.nii", "probability.nii.gz"]


def test_segment_refuses_to_write_over_its_own_inputs(tmp_path, capsys):
    image, support = segment_files(tmp_path, shape=(6, 16, 16))
    other = write_itk(tmp_path / "other.nii.gz", ellipsoids((6, 16, 16))[0])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    command = ["segment", "--image", str(image), "--support-labels", str(support), "--support-image", str(other),
               "--encoder", "tiny", "--probabilities", str(tmp_path / "out.nii.gz"), "--output"]
    result = cli(*command, str(support))  # the painting
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "also an input or another output of the same command" in result.stderr
    for output in (other, tmp_path / "out.nii.gz"):  # the support's image; the probabilities
        assert main([*command, str(output)]) == 1
        assert "also an input or another output of the same command" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_only_output_folder_is_refused_before_the_run(tmp_path):
    image, support = segment_files(tmp_path, shape=(6, 16, 16))
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    result = cli_obeying_permissions("segment", "--image", str(image), "--support-labels", str(support),
                                     "--encoder", "tiny", "--output", str(folder / "mask.nii.gz"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not writable" in result.stderr and "segmenting" not in result.stderr


def test_unreadable_inputs_are_named_without_a_traceback(tmp_path):
    scan = write_itk(tmp_path / "scan.nii.gz", ramp())
    scan.chmod(0o000)
    folder = tmp_path / "dicom"
    folder.mkdir(mode=0o000)
    result = cli_obeying_permissions("info", str(scan), str(folder))
    folder.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # ITK warns too
    assert len(errors) == 2 and all("permission denied" in error for error in errors)


def test_stale_partial_files_of_the_target_are_removed(tmp_path):
    target = tmp_path / "mask.nii.gz"
    alive = subprocess.Popen(["sleep", "30"])
    try:
        dead = 2**22 + 7  # beyond any pid Linux hands out
        names = {
            "killed": f".mask.nii.gz.{dead}-k1llx9.partial.nii.gz",
            "old-style": ".mask.nii.gz.a8f3k2q0.partial.nii.gz",
            "running": f".mask.nii.gz.{alive.pid}-w0rk1n.partial.nii.gz",
            "other target": f".liver.nii.gz.{dead}-zz9zz9.partial.nii.gz",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"half a file")
        write_volume(target, np.zeros((2, 3, 4), np.uint8), Geometry.identity((2, 3, 4), "uint8"))
    finally:
        alive.kill()
        alive.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([names["running"], names["other target"], "mask.nii.gz"])
