"""Self-supervised training: pseudo-labels, augmentation, episodes, trainer, resume, torchrun, model files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from napari_fewshot.cli import main
from napari_fewshot.core.encoders import build_encoder
from napari_fewshot.core.engine import segment
from napari_fewshot.core.heads import build_head
from napari_fewshot.core.model import FewShotModel, ModelFileError, model_source, packaged_model, read_model
from napari_fewshot.core.preprocess import Preprocessing, normalise_intensities
from napari_fewshot.train.augment import AugmentRanges, affine_matrix, random_warp, warp
from napari_fewshot.train.data import TrainingVolume, prepare_volume, preparation_settings
from napari_fewshot.train.episodes import EpisodeSampler
from napari_fewshot.train.loss import EpisodeLoss
from napari_fewshot.train.pseudolabels import body_mask, superpixels, supervoxels
from napari_fewshot.train.runs import weights_digest
from napari_fewshot.train.trainer import TrainConfig, train

SHAPE = (12, 48, 48)


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (z, y, x) in HU and its body: an elliptic body in air holding a bright and a fatty blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((y - 24) / 20) ** 2 + ((x - 24) / 18) ** 2 < 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 5, SHAPE)
    image[((y - 18) / 6) ** 2 + ((x - 20) / 5) ** 2 + ((z - 6) / 5) ** 2 < 1] = 200
    image[((y - 30) / 5) ** 2 + ((x - 30) / 6) ** 2 + ((z - 6) / 5) ** 2 < 1] = -100
    return image.astype(np.int16), body


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    image = sitk.GetImageFromArray(phantom()[0])
    image.SetSpacing((2.0, 2.0, 3.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def config(ct_file: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(images=[str(ct_file)], out=out, encoder="tiny", head="dspnet", freeze_encoder=True,
                    steps=6, log_every=1, checkpoint_every=3, device="cpu")
    return TrainConfig(**{**settings, **changes})


def test_pseudo_labels_cover_the_body_and_nothing_outside_it():
    image, body = phantom()
    found = body_mask(image, Preprocessing("CT"))
    assert (found & ~body).sum() == 0 and (found == body).mean() > 0.999
    scaled = normalise_intensities(image, Preprocessing("CT"))
    for method in ("felzenszwalb", "slic", "quickshift"):
        labels = superpixels(scaled[6], body[6], method)
        assert np.array_equal(labels > 0, body[6]), method
        assert len(np.unique(labels[body[6]])) >= 2, method
    volume_labels = supervoxels(scaled, body, (3.0, 2.0, 2.0))
    assert np.array_equal(volume_labels > 0, body)
    shared = set(np.unique(volume_labels[5])) & set(np.unique(volume_labels[6])) - {0}
    assert shared, "supervoxels should cross neighbouring slices"


def test_a_shift_moves_image_and_mask_where_the_transform_says():
    image = torch.zeros(1, 1, 64, 64)
    image[..., 20:30, 10:20] = 1.0
    grid = torch.nn.functional.affine_grid(affine_matrix(64, shift=(5.0, -3.0))[None], [1, 1, 64, 64], align_corners=False)
    moved_image, moved_mask = warp(image, grid), warp(image, grid, mode="nearest")
    for moved in (moved_image, moved_mask):
        rows, cols = torch.nonzero(moved[0, 0] > 0.5, as_tuple=True)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 26, 15, 24)


def test_a_random_warp_keeps_image_and_mask_aligned():
    image = torch.zeros(1, 1, 64, 64)
    image[..., 20:40, 15:35] = 1.0
    grid = random_warp(np.random.default_rng(3), 64, AugmentRanges())
    from_image = warp(image, grid) > 0.5
    mask = warp(image, grid, mode="nearest") > 0.5
    assert not torch.equal(mask, image > 0.5)
    assert 2 * (from_image & mask).sum() / (from_image.sum() + mask.sum()) > 0.95
    # features on a coarser grid follow the same warp
    coarse = warp(torch.nn.functional.avg_pool2d(image, 4), grid)
    assert torch.allclose(coarse, torch.nn.functional.avg_pool2d(warp(image, grid), 4), atol=0.2)


def test_episodes_and_skips(ct_file: Path, tmp_path: Path):
    encoder = build_encoder("tiny")
    settings = preparation_settings(encoder, freeze=True, superpixel_method="felzenszwalb", use_supervoxels=True, slice_mm=0)
    volume = prepare_volume(ct_file, encoder, settings, tmp_path / "cache", device=torch.device("cpu"))
    assert volume.trunk.shape == (len(volume.labels), encoder.trunk_channels, 32, 32)
    assert volume.images.shape[-1] == encoder.input_size
    sampler = EpisodeSampler([volume], from_trunk=True, head_grid=32)
    rng = np.random.default_rng(0)
    episodes = [sampler.draw(rng) for _ in range(20)]
    for episode in episodes:
        assert episode.support.shape == episode.query.shape == (1, encoder.trunk_channels, 32, 32)
        assert episode.support_mask.any() and episode.query_mask.any()
    assert sum(sampler.skipped.values()) == 0


def test_draws_that_make_no_usable_episode_are_counted_and_redrawn():
    labels = torch.ones(2, 64, 64, dtype=torch.int32)  # slice 0: one segment only
    labels[1, 30, 30] = 2  # slice 1: a speck (too small for the 32x32 head grid) in segment 1
    volume = TrainingVolume(images=torch.rand(2, 64, 64), labels=labels, trunk=None, spacing_mm=(3.0, 1.0, 1.0),
                            source="synthetic", key="synthetic", supervoxels=False)
    sampler = EpisodeSampler([volume], from_trunk=False, head_grid=32, ranges=AugmentRanges(elastic_alpha=0.0))
    rng = np.random.default_rng(0)
    for _ in range(10):
        episode = sampler.draw(rng)
        assert episode.support.shape == (1, 3, 64, 64)
        assert episode.support_mask.sum() > 64 * 32  # always the large segment
    assert sampler.skipped["one_segment"] > 0 and sampler.skipped["too_small"] > 0
    labels[1] = 1  # no slice left with two segments: a clear error, not an endless search
    with pytest.raises(ValueError, match="1000 draws in a row made no usable episode"):
        sampler.draw(rng)


def test_a_share_of_queries_lies_just_past_the_supervoxels_end_with_an_empty_mask():
    labels = torch.ones(12, 64, 64, dtype=torch.int32)
    labels[3:6, 16:48, 16:48] = 2  # segment 2 crosses slices 3 to 5; segment 1 crosses every slice
    trunk = torch.arange(12.0)[:, None, None, None].expand(12, 4, 32, 32)  # each slice's features hold its index
    volume = TrainingVolume(images=torch.rand(12, 64, 64), labels=labels, trunk=trunk, spacing_mm=(3.0, 1.0, 1.0),
                            source="synthetic", key="synthetic", supervoxels=True)
    sampler = EpisodeSampler([volume], from_trunk=True, head_grid=32, ranges=AugmentRanges(elastic_alpha=0.0),
                             reach=2, absent_share=0.5)
    rng = np.random.default_rng(0)
    absent = present = 0
    for _ in range(60):
        episode = sampler.draw(rng)
        support_z, query_z = (round(float(x[0, 0, 16, 16])) for x in (episode.support, episode.query))
        assert support_z in (3, 4, 5) and 0 < abs(query_z - support_z) <= 2
        if episode.query_mask.any():
            present += 1
            segment = 2 if episode.support_mask[0, 32, 32] == 1 else 1
            assert labels[query_z].eq(segment).any()
        else:
            absent += 1
            assert query_z in (1, 2, 6, 7) and episode.support_mask[0, 32, 32] == 1  # segment 2, past its ends
    assert absent > 10 and present > 10
    assert sampler.skipped["no_end_near"] > 0  # segment 1 crosses every slice: it has no end to query past


def test_a_query_past_the_end_is_scored_as_background_and_aligns_nothing():
    model = FewShotModel(build_encoder("tiny"), build_head("alpnet").train())
    support, query = torch.rand(1, 64, 32, 32), torch.rand(1, 64, 32, 32)  # the tiny trunk's features
    mask = torch.zeros(1, 64, 64)
    mask[0, 16:48, 16:48] = 1.0
    loss, query_loss, alignment_loss = EpisodeLoss(model, from_trunk=True)(support, mask, query, torch.zeros(1, 64, 64))
    assert alignment_loss == 0 and loss == query_loss > 0
    loss.backward()
    assert model.reduce.weight.grad.abs().sum() > 0  # an empty query still trains the projection


def held_out_loss(model: FewShotModel, episodes) -> float:
    loss = EpisodeLoss(model, from_trunk=True)
    with torch.no_grad():
        return float(np.mean([float(loss(e.support, e.support_mask, e.query, e.query_mask)[0]) for e in episodes]))


def test_training_steps_lower_the_loss_and_write_a_model_with_its_card(ct_file: Path, tmp_path: Path):
    run = config(ct_file, tmp_path / "run", steps=40, lr=0.05, log_every=10, checkpoint_every=20)
    path = train(run)
    encoder = build_encoder("tiny")
    settings = preparation_settings(encoder, freeze=True, superpixel_method="felzenszwalb", use_supervoxels=False, slice_mm=0)
    cached = sorted(run.cache_dir.iterdir())
    volume = prepare_volume(ct_file, encoder, settings, run.cache_dir, device=torch.device("cpu"))
    assert sorted(run.cache_dir.iterdir()) == cached  # the run's cache serves slice_mm=0 as well as 0.0
    sampler = EpisodeSampler([volume], from_trunk=True, head_grid=32)
    episodes = [sampler.draw(np.random.default_rng([99, i])) for i in range(12)]
    untrained = FewShotModel(encoder, build_head("dspnet").train())
    trained = FewShotModel(build_encoder("tiny"), build_head("dspnet").train())
    state, card = read_model(path)
    trained.load_trained_state(state, str(path))
    assert held_out_loss(trained, episodes) < held_out_loss(untrained, episodes)
    assert set(state) == {"reduce.weight", "head.bcma.mixing"}  # a frozen trunk is not stored
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == card
    assert card["encoder"] == "tiny" and card["head"] == "dspnet" and card["steps"] == 40
    assert card["data"][0]["image"] == str(ct_file) and card["data"][0]["key"] == volume.key
    assert card["date"] and card["code_version"]
    log = [json.loads(line) for line in (run.out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40] and all(np.isfinite(r["loss"]) for r in log)


def test_an_interrupted_run_resumes_to_the_same_weights(ct_file: Path, tmp_path: Path):
    uninterrupted = train(config(ct_file, tmp_path / "whole"))

    def stop_at_five(stage, done, total, values):
        if stage == "train" and done == 5:
            raise KeyboardInterrupt

    interrupted = config(ct_file, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=stop_at_five)
    assert not (interrupted.out / "model.safetensors").exists()
    resumed = train(interrupted)  # from the checkpoint of step 3: steps 4 and 5 run again
    whole, cut = read_model(uninterrupted)[0], read_model(resumed)[0]
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[name], cut[name]) for name in whole)
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (tmp_path / "whole", tmp_path / "cut")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4, 5, 6]  # steps 4 and 5 logged once, not twice
    assert [r["loss"] for r in logs[1]] == pytest.approx([r["loss"] for r in logs[0]])
    with pytest.raises(ValueError, match="another run"):
        train(config(ct_file, tmp_path / "cut", head="alpnet", steps=9))


def test_model_files_are_checked_before_use(ct_file: Path, tmp_path: Path):
    path = train(config(ct_file, tmp_path / "run", steps=2))
    image, body = phantom()
    painting = np.zeros_like(body, dtype=np.uint8)
    painting[6][body[6]] = 1
    trained = segment(image, painting, encoder="tiny", head="dspnet", weights=path, device="cpu")
    untrained = segment(image, painting, encoder="tiny", head="dspnet", weights="none", device="cpu")
    assert trained.weights == str(path) and untrained.weights == "none"
    assert not np.array_equal(trained.probabilities[1], untrained.probabilities[1])
    with pytest.raises(ModelFileError, match="trained for the 'tiny' encoder"):
        segment(image, painting, encoder="litemedsam", weights=path, device="cpu")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="not a readable model file"):
        read_model(corrupt)
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"reduce.weight": torch.zeros(1)}, pickled)  # a pickle is never unpickled
    with pytest.raises(ModelFileError, match="not a readable model file"):
        read_model(pickled)
    with pytest.raises(ModelFileError, match="no model file"):
        read_model(tmp_path / "missing.safetensors")


def test_the_shipped_models_are_found_by_encoder_and_head_and_say_how_they_were_made():
    shipped = sorted(Path(str(resources.files("napari_fewshot") / "models")).glob("*.safetensors"))
    assert shipped, "the package ships its trained models (package data under napari_fewshot/models)"
    for path in shipped:
        state, card = read_model(path)
        assert path.stem == f"{card['encoder']}-{card['head']}"
        assert model_source("default", card["encoder"], card["head"]) == packaged_model(card["encoder"], card["head"]) == path
        assert card["steps"] > 0 and card["command"].startswith("napari-fewshot train ")
        assert not card["trained_trunk"] and {name.split(".")[0] for name in state} <= {"reduce", "head"}
    assert model_source("default", "tiny", "dspnet") is None  # nothing ships for the test encoder: untrained


def test_the_segment_command_takes_trained_weights(ct_file: Path, tmp_path: Path, capsys):
    path = train(config(ct_file, tmp_path / "run", steps=2))
    image, body = phantom()
    painting = sitk.GetImageFromArray(np.where(np.arange(SHAPE[0])[:, None, None] == 6, body, 0).astype(np.uint8))
    painting.CopyInformation(sitk.ReadImage(str(ct_file)))
    sitk.WriteImage(painting, str(tmp_path / "support.nii.gz"))
    common = ["segment", "--image", str(ct_file), "--support-labels", str(tmp_path / "support.nii.gz"),
              "--encoder", "tiny", "--device", "cpu", "--output", str(tmp_path / "mask.nii.gz")]
    assert main([*common, "--weights", str(path)]) == 0
    assert sitk.ReadImage(str(tmp_path / "mask.nii.gz")).GetSize() == sitk.ReadImage(str(ct_file)).GetSize()
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    assert main([*common, "--weights", str(tmp_path / "broken.safetensors")]) == 1
    assert "not a readable model file" in capsys.readouterr().err


def test_two_torchrun_ranks_train_in_step(ct_file: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "napari_fewshot.cli", "train", "--images", str(ct_file), "--out", str(out),
               "--encoder", "tiny", "--freeze-encoder", "--steps", "4", "--log-every", "2", "--device", "cpu"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # and they trained: the weights are not the untrained model's
    untrained = FewShotModel(build_encoder("tiny").requires_grad_(False), build_head("dspnet"))
    assert ranks[0]["weights"] != weights_digest(untrained)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["episodes"] == 8


def test_the_train_command_says_what_is_wrong(tmp_path: Path, capsys):
    assert main(["train", "--images", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "run"),
                 "--encoder", "tiny", "--device", "cpu"]) == 1
    assert "missing.nii.gz" in capsys.readouterr().err
    for wrong, says in ((["--absent-queries", "0.25"], "needs --supervoxels"),
                        (["--supervoxels", "--query-reach", "0"], "--query-reach must be at least 1"),
                        (["--lr", "nan"], "--lr must be a finite number above 0; got nan"),
                        (["--lr", "0"], "--lr must be a finite number above 0; got 0.0"),
                        (["--slice-mm", "inf"], "--slice-mm must be a finite number from 0; got inf")):
        assert main(["train", "--images", str(tmp_path / "a.nii.gz"), "--out", str(tmp_path / "run"),
                     "--encoder", "tiny", "--device", "cpu", *wrong]) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and says in error and "\n" not in error
    one_slice = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(phantom()[0][6:7]), str(one_slice))
    assert main(["train", "--images", str(one_slice), "--out", str(tmp_path / "run"), "--supervoxels",
                 "--encoder", "tiny", "--freeze-encoder", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"error: {one_slice}: only one slice to train on") and "without --supervoxels" in error
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_training_cache_that_is_no_folder_is_refused_and_damaged_or_blocked_entries_are_prepared_again(
        ct_file: Path, tmp_path: Path, capsys, caplog):
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--images", str(ct_file), "--out", str(tmp_path / "run"), "--encoder", "tiny",
                 "--device", "cpu", "--cache", str(tmp_path / "file")]) == 1
    assert "file: this is a file, not a folder" in capsys.readouterr().err
    encoder = build_encoder("tiny")
    settings = preparation_settings(encoder, freeze=True, superpixel_method="felzenszwalb", use_supervoxels=False,
                                    slice_mm=0)
    cache = tmp_path / "cache"
    first = prepare_volume(ct_file, encoder, settings, cache, device=torch.device("cpu"))
    (grid,), (labels,) = cache.glob("slices-*"), cache.glob("labels-*")
    grid.write_bytes(grid.read_bytes()[:100])  # cut short, as by a crash
    labels.unlink()
    labels.mkdir()  # someone's folder where the file goes: it stays
    with caplog.at_level(logging.WARNING):
        again = prepare_volume(ct_file, encoder, settings, cache, device=torch.device("cpu"))
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(said) == 2 and "cached training data is damaged" in said[0] and "is a folder where a cache file goes" in said[1]
    assert all(torch.equal(getattr(again, name), getattr(first, name)) for name in ("images", "labels", "trunk"))
    assert labels.is_dir() and load_file(str(grid))["images"].shape == first.images.shape  # replaced whole
