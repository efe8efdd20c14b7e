"""The refine step (PCCS): its losses on hand-made tensors, the mean teacher, a few real steps, the CLI round trip."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import dice, ellipsoids, write_itk
from napari_fewshot.cli import main
from napari_fewshot.core.errors import SegmentationError
from napari_fewshot.core.refined import load_refined, segment_with_model
from napari_fewshot.core.unet import EMBEDDING, UNet
from napari_fewshot.train.refine.data import refine_data
from napari_fewshot.train.refine.losses import (
    consistency_loss, entropy, ramp_up, soft_dice_loss, supervised_loss, uncertainty_threshold,
)
from napari_fewshot.train.refine.memory import PrototypeMemory, sinkhorn
from napari_fewshot.train.refine.prototypes import Prototypes, prototype_contrastive_loss, signed_distance, slice_prototypes
from napari_fewshot.train.refine.teacher import ema_update, make_teacher
from napari_fewshot.train.refine.trainer import RefineCancelled, RefineConfig, refine
from napari_fewshot.train.runs import LOG


def test_supervised_loss_and_uncertainty_on_hand_made_tensors():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(1 - perfect, target).item() == pytest.approx(1.0, abs=1e-5)
    assert supervised_loss(perfect * 20 - 10, target).item() < 1e-3 < supervised_loss(10 - perfect * 20, target).item()
    uniform = torch.full((1, 3, 2, 2), 1 / 3)
    assert entropy(uniform).flatten().tolist() == pytest.approx([math.log(3)] * 4)
    assert entropy(perfect).max().item() == pytest.approx(0.0, abs=1e-6)
    assert uncertainty_threshold(0, 100) == 0.25 and uncertainty_threshold(100, 100) == 0.5
    assert ramp_up(0, 10, 0.1) == pytest.approx(0.1 * math.exp(-5)) and ramp_up(20, 10, 0.1) == pytest.approx(0.1)


def test_consistency_counts_only_where_the_teacher_is_sure():
    student = torch.tensor([[0.9, 0.5], [0.1, 0.5]]).reshape(1, 2, 1, 2)
    teacher = torch.tensor([[0.7, 0.9], [0.3, 0.1]]).reshape(1, 2, 1, 2)
    sure = entropy(teacher)
    # only the second pixel is sure below 0.4 nats: squared error 0.4^2 on both classes
    expected = 0.16 + 0.1 * ((entropy(student) - sure) ** 2).mean().item()
    assert consistency_loss(student, teacher, sure, threshold=0.4).item() == pytest.approx(expected, rel=1e-5)
    assert consistency_loss(teacher, teacher, sure, 0.4).item() == pytest.approx(0.0, abs=1e-7)


def test_signed_distance_layers_of_a_disc():
    y, x = np.mgrid[:21, :21]
    disc = (y - 10) ** 2 + (x - 10) ** 2 <= 6**2
    distance = signed_distance(disc)
    assert distance[10, 10] == pytest.approx(-math.sqrt(37))  # the nearest outside pixel is 6 rows and 1 column off
    assert distance[10, 16] == -1.0 and distance[10, 17] == 1.0 and (distance[disc] < 0).all()
    assert signed_distance(np.zeros((3, 3), bool)).min() == np.inf
    embedding = torch.randn(EMBEDDING, 21, 21)
    found = slice_prototypes(embedding, disc.astype(int), torch.ones(21, 21), classes=2, threshold=0.5)
    layers = int(np.ceil(-distance.min()))
    assert found.classes.tolist() == [1] * layers + [0, 0]  # one prototype per iso-layer, two of the background
    assert torch.allclose(found.vectors.norm(dim=1), torch.ones(len(found.classes)))


def test_contrastive_loss_is_finite_with_one_prototype_in_a_class_and_prefers_tight_classes():
    vectors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, -0.6]])
    lone = Prototypes(vectors, torch.tensor([0, 0, 1]), torch.zeros(3))
    value = prototype_contrastive_loss(lone)
    assert torch.isfinite(value) and value.item() > 0
    # the anchors are the two of class 0 (the lone one has no positive); each has one positive and one negative
    s = vectors @ vectors.T / 0.05
    expected = 0.5 * sum(torch.logaddexp(s[i, j], s[i, 2]) - s[i, j] for i, j in ((0, 1), (1, 0)))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    tighter = Prototypes(vectors, torch.tensor([0, 1, 0]), torch.zeros(3))  # cos 0.8 within the class, not 0.6
    assert prototype_contrastive_loss(tighter).item() < value.item()
    alone = Prototypes(vectors[:1], torch.tensor([0]), torch.zeros(1))
    assert prototype_contrastive_loss(alone).item() == 0.0


def test_sinkhorn_assignments_sum_to_one_per_pixel_and_share_the_prototypes():
    scores = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    q = sinkhorn(scores)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    balanced = sinkhorn(scores, iterations=200)  # converged: every prototype takes 12 / 3 pixels
    assert torch.allclose(balanced.sum(dim=0), torch.full((3,), 4.0), atol=0.05)
    assert torch.allclose(balanced.sum(dim=1), torch.ones(12), atol=1e-5)
    memory = PrototypeMemory(2, 4, torch.Generator().manual_seed(0))
    before = memory.prototypes.clone()
    pixels = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    targets = memory.update(pixels, pixels, torch.tensor([0] * 5 + [1] * 5))
    assert set(targets[:5].tolist()) <= {0, 1} and set(targets[5:].tolist()) <= {2, 3}
    assert not torch.equal(before, memory.prototypes)
    student = pixels.clone().requires_grad_(True)
    memory.auxiliary_loss(student, targets).backward()
    assert student.grad.abs().sum() > 0  # the auxiliary loss trains the student's embedding


def test_ema_update_arithmetic():
    student = torch.nn.Linear(1, 1, bias=False)
    teacher = make_teacher(student)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    ema_update(teacher, student, step=0)  # a = min(1 - 1/1, 0.99) = 0: the teacher takes the student's weights
    assert teacher.weight.item() == 1.0
    with torch.no_grad():
        teacher.weight.fill_(0.0)
    ema_update(teacher, student, step=1000)  # a = 0.99
    assert teacher.weight.item() == pytest.approx(0.01)
    assert not teacher.weight.requires_grad


def _volume_files(folder, slices=(6, 9, 12, 15, 18)):
    """The ellipsoid volume and a label volume painted on ``slices``, written with a non-trivial geometry."""
    image, truth = ellipsoids()
    labels = np.zeros_like(truth)
    labels[list(slices)] = truth[list(slices)]
    paths = {}
    for name, array in (("image", image), ("labels", labels)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((0.8, 0.8, 2.0))
        volume.SetOrigin((10.0, -5.0, 3.0))
        volume.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(volume, paths[name])
    return image, truth, paths


def test_labelled_and_unlabelled_slices_from_a_painting():
    image, truth = ellipsoids()
    labels = np.zeros_like(truth)
    labels[[6, 12]] = truth[[6, 12]]
    data = refine_data([(image, 1.0), (image, 1.0)], [labels], size=32)
    assert data.values == (1, 2) and data.classes == 3 and data.modality == "MR"
    assert data.labelled.shape == (2, 1, 32, 32) and data.unlabelled.shape == (24 - 2 + 24, 1, 32, 32)
    assert set(data.targets.unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="nothing is labelled"):
        refine_data([(image, 1.0)], [np.zeros_like(truth)], size=32)


@pytest.mark.parametrize("method", ["supervised", "pccs"])
def test_a_few_steps_lower_the_supervised_loss_and_move_the_teacher(tmp_path, method):
    _, _, paths = _volume_files(tmp_path)
    config = RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path / method, method=method,
                          steps=24, warmup=4, batch=2, size=32, log_every=4, device="cpu")
    seen = []
    path = refine(config, progress=lambda stage, done, total, values: seen.append((done, values)))
    log = [json.loads(line) for line in (tmp_path / method / LOG).read_text().splitlines()]
    assert log[-1]["supervised"] < log[0]["supervised"] and seen[-1][0] == 24 and seen[-1][1]["seconds_left"] == 0
    network, card = load_refined(path)
    assert card["method"] == method and card["values"] == [1, 2] and card["data"]["labelled_slices"] == 5
    teacher = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)["teacher"]
    torch.manual_seed(0)
    first = UNet(3)  # the student's (and teacher's) initial weights
    moved = not torch.equal(teacher["segmentation.weight"], first.state_dict()["segmentation.weight"])
    assert moved == (method == "pccs")  # only the mean teacher learns
    if method == "pccs":
        assert {"consistency", "contrastive", "auxiliary"} <= set(log[-1])
        assert all(math.isfinite(record["loss"]) for record in log)


def test_a_cancelled_run_resumes_where_it_stopped(tmp_path):
    _, _, paths = _volume_files(tmp_path)
    config = RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path / "run", method="supervised",
                          steps=8, batch=2, size=32, log_every=2, device="cpu")
    calls = []
    with pytest.raises(RefineCancelled, match="cancelled at step 5 of 8"):
        refine(config, cancel=lambda: calls.append(1) or len(calls) > 5)
    refine(config)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / LOG).read_text().splitlines()]
    assert steps == [2, 4, 6, 8]  # logged once each: the resumed run goes on from step 5


def test_refine_then_segment_with_the_model_keeps_the_geometry(tmp_path, capsys):
    image, truth, paths = _volume_files(tmp_path)
    out = tmp_path / "refined"
    assert main(["refine", "--images", paths["image"], "--labels", paths["labels"], "--out", str(out),
                 "--method", "supervised", "--steps", "40", "--batch", "4", "--size", "32", "--device", "cpu"]) == 0
    output = tmp_path / "prediction.nrrd"
    assert main(["segment", "--image", paths["image"], "--model", str(out), "--output", str(output)]) == 0
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(paths["image"])
    assert written.GetSpacing() == source.GetSpacing() and written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    labels = sitk.GetArrayFromImage(written)
    assert set(np.unique(labels)) <= {0, 1, 2} and dice(labels == 1, truth == 1) > 0.7
    assert main(["segment", "--image", paths["image"], "--output", str(output)]) == 2
    assert "give --support-labels" in capsys.readouterr().err


def test_bad_refine_input_is_refused_with_the_fix(tmp_path):
    _, _, paths = _volume_files(tmp_path)
    with pytest.raises(ValueError, match="multiple of 16"):
        refine(RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path, size=40))
    with pytest.raises(ValueError, match="unknown method 'fixmatch'"):
        refine(RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path, method="fixmatch"))
    with pytest.raises(ValueError, match="2 label files for 1 images"):
        refine(RefineConfig(images=[paths["image"]], labels=[paths["labels"]] * 2, out=tmp_path))
    with pytest.raises(ValueError, match="--size must be a multiple of 16 .* up to 1024; got 65536"):
        refine(RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path, size=65536))
    for name, value, says in (("lr", float("nan"), "lr must be a finite number above 0; got nan"),
                              ("momentum", 1.0, "momentum must be a finite number from 0 below 1; got 1.0"),
                              ("consistency", -0.1, "consistency must be a finite number from 0; got -0.1")):
        with pytest.raises(ValueError, match=f"^{says}$"):
            refine(RefineConfig(images=[paths["image"]], labels=[paths["labels"]], out=tmp_path, **{name: value}))
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(SegmentationError, match="no model file at"):
        segment_with_model(np.zeros((2, 4, 4)), tmp_path / "missing.safetensors")


def test_a_refined_models_card_is_checked_against_bounds_and_its_weights_before_use(tmp_path, capsys):
    from napari_fewshot.core.model import ModelFileError, write_tensor_file
    from napari_fewshot.core.refined import REFINED_FORMAT

    weights = UNet(3).state_dict()  # two structures and the background
    card = {"format": REFINED_FORMAT, "values": [1, 2], "size": 32, "modality": "MR"}
    for name, changes, says in (
        ("huge", {"size": 65536}, "size 65536: not a multiple of 16 from 16 to 1024"),
        ("more", {"values": [1, 2, 3]}, r"3 label values, but its weights' segmentation layer has shape \(3, 32, "),
        ("many", {"values": list(range(8))}, r"label values \[0, 1, 2, 3, 4\] and 3 more"),
        ("twice", {"values": [1, 1]}, "label values \\[1, 1\\]: not distinct whole numbers from 1 to 65535"),
    ):
        path = write_tensor_file(tmp_path / f"{name}.safetensors", weights, {**card, **changes})
        with pytest.raises(ModelFileError, match=f"^{re.escape(str(path))}: its card is damaged \\(.*{says}.*\\); "
                           "refine the model again$"):
            load_refined(path)
    network, _ = load_refined(write_tensor_file(tmp_path / "whole.safetensors", weights, card))
    assert network.classes == 3
    image = str(write_itk(tmp_path / "scan.nii.gz", ellipsoids((6, 32, 32))[0]))
    assert main(["segment", "--image", image, "--model", str(tmp_path / "huge.safetensors"),
                 "--output", str(tmp_path / "mask.nii.gz")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "size 65536" in error and "\n" not in error
    assert not (tmp_path / "mask.nii.gz").exists()


def test_two_torchrun_ranks_refine_in_step(tmp_path):
    _, _, paths = _volume_files(tmp_path)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "napari_fewshot.cli", "refine", "--images", paths["image"], "--labels", paths["labels"],
               "--out", str(out), "--steps", "6", "--batch", "2", "--size", "32", "--log-every", "3", "--device", "cpu"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 6
    assert ranks[0]["weights"] == ranks[1]["weights"]  # every loss of PCCS ran (no warm-up in 6 steps), in step
    assert {"contrastive", "auxiliary"} <= set(json.loads((out / LOG).read_text().splitlines()[-1]))
