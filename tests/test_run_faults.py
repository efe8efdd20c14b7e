"""Commands that run long (train, refine, evaluate, segment) refuse bad runs before working, and end cleanly."""

from __future__ import annotations

import io
import os
import signal
import subprocess

import numpy as np
import pytest
import torch

from conftest import cli, ellipsoids, start_cli, write_itk
from napari_fewshot.cli import main
from napari_fewshot.io import read_volume


@pytest.fixture
def labelled(tmp_path):
    """An image and its labels painted on five slices (files), for refine."""
    image, truth = ellipsoids()
    labels = np.zeros_like(truth)
    labels[6:19:3] = truth[6:19:3]
    return write_itk(tmp_path / "image.nii.gz", image), write_itk(tmp_path / "labels.nii.gz", labels)


def refine_args(labelled, out) -> list[str]:
    image, labels = labelled
    return ["refine", "--images", str(image), "--labels", str(labels), "--out", str(out), "--method", "supervised",
            "--steps", "2", "--batch", "2", "--size", "32", "--device", "cpu"]


class Payload:
    """Unpickling this runs a command: what a malicious checkpoint holds."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, labelled):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"step": Payload(marker)}, out / "checkpoint.pt")
    result = cli(*refine_args(labelled, out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "checkpoint.pt is damaged, or not a checkpoint napari-fewshot wrote" in result.stderr
    assert "Delete it (or move it away) to start the run over" in result.stderr
    assert "weights_only" not in result.stderr  # torch's advice to load unsafely is not passed on
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["random bytes", "empty", "truncated", "not a run's"])
def test_a_damaged_checkpoint_says_how_to_start_over(tmp_path, labelled, capsys, damage):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "checkpoint.pt"
    torch.save({"identity": "{}", "step": 1, "history": "[]", "student": torch.zeros(1000)}, checkpoint)
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes({"random bytes": np.random.default_rng(0).bytes(4096), "empty": b"",
                            "truncated": whole[: len(whole) // 2], "not a run's": torch_bytes([1, 2])}[damage])
    assert main(refine_args(labelled, out)) == 1
    error = capsys.readouterr().err
    assert "checkpoint.pt is damaged" in error and "weights_only" not in error


def torch_bytes(value) -> bytes:
    """What torch.save writes for ``value``."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_out_naming_an_existing_file_is_refused_before_working(tmp_path, labelled, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's notes")
    # train's image is missing: the --out refusal comes first, before any image is read
    result = cli("train", "--images", str(tmp_path / "missing.nii.gz"), "--out", str(taken), "--encoder", "tiny",
                 "--device", "cpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "notes.txt: this is a file, not a folder" in result.stderr
    for command in (refine_args(labelled, taken),
                    ["evaluate", "--case", str(tmp_path), "1", "--methods", "copy", "--out", str(taken)]):
        assert main(command) == 1
        assert "notes.txt: this is a file, not a folder" in capsys.readouterr().err
    assert taken.read_text() == "the user's notes"


def test_refine_and_evaluate_refuse_labels_on_another_grid(tmp_path, capsys):
    image, truth = ellipsoids()
    image_path = write_itk(tmp_path / "image.nii.gz", image)
    label_path = write_itk(tmp_path / "label.nii.gz", truth, origin=(0.0, 0.0, 0.0))  # the image's is another
    assert main(refine_args((image_path, label_path), tmp_path / "run")) == 1
    assert "label.nii.gz is not on the grid of" in capsys.readouterr().err
    assert main(["evaluate", "--case", str(tmp_path), "1", "--methods", "copy", "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert "label.nii.gz is not on the grid of" in error and "origin" in error


def test_evaluate_takes_structure_names_and_ignores_other_files_named_image(tmp_path, capsys):
    image, truth = ellipsoids()
    write_itk(tmp_path / "image.nii.gz", image)
    write_itk(tmp_path / "label.nii.gz", truth)
    (tmp_path / "image.json").write_text("{}")  # sorts before image.nii.gz
    (tmp_path / "labels.json").write_text('{"1": "liver", "2": "spleen"}')
    assert main(["evaluate", "--case", str(tmp_path), "kidney", "--methods", "copy", "--out", str(tmp_path / "o")]) == 1
    assert "'kidney' is neither a label value nor a structure named in its labels.json" in capsys.readouterr().err
    assert main(["evaluate", "--case", str(tmp_path), "Spleen", "--methods", "copy", "--repeats", "1",
                 "--out", str(tmp_path / "o")]) == 0
    assert "spleen" in (tmp_path / "o" / "results.md").read_text()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_segment_ends_with_one_line_and_no_partial_file(tmp_path, how):
    image, truth = ellipsoids((48, 64, 64))
    support = np.zeros_like(truth)
    support[12] = truth[12]
    image_path, support_path = write_itk(tmp_path / "scan.nii.gz", image), write_itk(tmp_path / "painted.nii.gz", support)
    out = tmp_path / "out"
    out.mkdir()
    process = start_cli(
        "segment", "--image", str(image_path), "--support-labels", str(support_path), "--encoder", "tiny",
        "--device", "cpu", "--output", str(out / "mask.nii.gz"), "--probabilities", str(out / "p_{label}.nii.gz"),
        stderr=subprocess.PIPE,
    )
    started = ""
    while not started.endswith("segmenting"):  # running: the handlers are in place
        character = process.stderr.read(1)
        assert character, f"the command ended before segmenting: {started}"
        started += character
    process.send_signal(how)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == (130 if how == signal.SIGINT else 143), rest
    assert "interrupted: no output was left half-written" in rest and "Traceback" not in rest
    assert sorted(p.name for p in out.iterdir()) in ([], ["mask.nii.gz", "p_1.nii.gz", "p_2.nii.gz"])


def test_a_support_slice_painted_on_every_voxel_is_refused_and_mostly_painted_warned(tmp_path):
    from napari_fewshot.core.errors import SegmentationError
    from napari_fewshot.core.support import SupportWarning, painted_structures

    support = np.zeros((6, 16, 16), np.uint8)
    support[3, :, :15] = 1  # 94 % painted
    with pytest.warns(SupportWarning, match="slice 3 of the support is 94% painted"):
        assert painted_structures(support) == {1: (3,)}
    support[3, :, 15] = 2  # every voxel, two structures
    with pytest.raises(SegmentationError, match="slice 3 of the support is painted on every voxel"):
        painted_structures(support)
    image = write_itk(tmp_path / "scan.nii.gz", ellipsoids((6, 16, 16))[0])
    painted = write_itk(tmp_path / "painted.nii.gz", support)
    result = cli("segment", "--image", str(image), "--support-labels", str(painted), "--encoder", "tiny",
                 "--device", "cpu", "--output", str(tmp_path / "mask.nii.gz"))
    assert result.returncode == 1 and "painted on every voxel" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mask.nii.gz").exists()


def test_threshold_must_be_a_probability(capsys):
    command = ["segment", "--image", "ct.nii.gz", "--support-labels", "s.nii.gz", "--output", "m.nii.gz", "--threshold"]
    result = cli(*command, "2")
    refused = "argument --threshold: threshold must be a probability between 0 and 1 (exclusive); got"
    assert result.returncode == 2 and f"{refused} 2.0" in result.stderr
    for value, message in (("-1", refused), ("0", refused), ("1", refused), ("nan", refused),
                           ("half", "argument --threshold: 'half' is not a number")):
        with pytest.raises(SystemExit) as exited:
            main([*command, value])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_an_unknown_modality_is_refused():
    from napari_fewshot.core.errors import SegmentationError
    from napari_fewshot.core.preprocess import Preprocessing

    with pytest.raises(SegmentationError, match="modality must be one of CT, MR; got 'PET'"):
        Preprocessing("PET")


@pytest.mark.filterwarnings("ignore::napari_fewshot.io.read.LabelMapWarning")  # -1 is meant to look unlike labels
@pytest.mark.parametrize("value", [70000, -1])
def test_refine_refuses_label_values_a_model_cannot_give(tmp_path, labelled, capsys, value):
    image, labels = labelled
    painted = read_volume(labels).data.astype(np.int32)
    painted[painted == 2] = value
    assert main(refine_args((image, write_itk(tmp_path / "big_labels.nrrd", painted)), tmp_path / "run")) == 1
    assert "use 1..65535 for structures and 0 for unlabelled voxels" in capsys.readouterr().err


def refined_model_file(path, state=None, **card):
    """A refined model file as 'napari-fewshot refine' writes one (untrained), with ``card`` entries replaced."""
    from napari_fewshot.core.model import write_tensor_file
    from napari_fewshot.core.refined import REFINED_FORMAT
    from napari_fewshot.core.unet import UNet

    card = {"format": REFINED_FORMAT, "values": [1, 2], "modality": "MR", "size": 32, **card}
    return write_tensor_file(path, UNet(3).state_dict() if state is None else state, card)


def test_damaged_refined_models_are_refused_with_the_reason(tmp_path, capsys):
    from napari_fewshot.core.model import ModelFileError
    from napari_fewshot.core.refined import load_refined
    from napari_fewshot.core.unet import UNet

    state = UNet(3).state_dict()
    first = next(name for name, tensor in state.items() if tensor.is_floating_point())
    cases = {
        "holds NaN or infinite weights": {**state, first: torch.full_like(state[first], float("nan"))},
        "whole numbers for real weights": {**state, first: state[first].round().to(torch.int32)},
        "missing tensors": {name: tensor for name, tensor in state.items() if name != first},
    }
    for message, damaged in cases.items():
        with pytest.raises(ModelFileError, match=message):
            load_refined(refined_model_file(tmp_path / "model.safetensors", damaged))
    for card in ({"values": [70000]}, {"values": None}, {"size": "large"}, {"modality": "PET"}):
        with pytest.raises(ModelFileError, match="its card is damaged"):
            load_refined(refined_model_file(tmp_path / "model.safetensors", **card))
    image = write_itk(tmp_path / "scan.nii.gz", ellipsoids((6, 16, 16))[0])
    assert main(["segment", "--image", str(image), "--model", str(tmp_path), "--output", str(tmp_path / "m.nii.gz")]) == 1
    assert "its card is damaged" in capsys.readouterr().err


def test_segment_reads_the_time_point_it_is_given(tmp_path, capsys):
    image = ellipsoids((6, 16, 16))[0]
    series = tmp_path / "dynamic.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.stack([image, image + 50, image + 100]), isVector=False), str(series))
    support = np.zeros((6, 16, 16), np.uint8)
    support[3, 5:11, 5:11] = 1
    painted = write_itk(tmp_path / "painted.nii.gz", support, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    common = ["segment", "--image", str(series), "--support-labels", str(painted), "--encoder", "tiny",
              "--device", "cpu", "--output", str(tmp_path / "mask.nii.gz")]
    assert main(common) == 1
    error = capsys.readouterr().err
    assert "3 time points" in error and "--index N" in error
    result = cli(*common, "--index", "2")
    assert result.returncode == 0, result.stderr
    assert read_volume(tmp_path / "mask.nii.gz").data.shape == (6, 16, 16)


def test_a_refined_model_needs_a_slice_axis_of_the_volume(tmp_path):
    from napari_fewshot.core.errors import SegmentationError
    from napari_fewshot.core.refined import segment_with_model

    with pytest.raises(SegmentationError, match="axis 0, 1 or 2; got 3 dimensions, axis 3"):
        segment_with_model(np.zeros((2, 4, 4)), refined_model_file(tmp_path / "model.safetensors"), axis=3)
