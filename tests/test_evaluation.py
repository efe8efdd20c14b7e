"""The benchmark harness: metrics against hand-computed cases, protocols, propagation, interpolation, kinds, and a whole run."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from conftest import ellipsoids
from napari_fewshot.cli import main
from napari_fewshot.core.engine import encode_volume
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.backends import resolve_runtime
from napari_fewshot.core.sam_decoder import BoxDecoder, square_box
from napari_fewshot.evaluation.cases import read_case
from napari_fewshot.evaluation.interpolation import interpolate
from napari_fewshot.evaluation.kinds import OTHER, kind
from napari_fewshot.evaluation.methods import method
from napari_fewshot.evaluation.metrics import average_surface_distance, dice, hd95, jaccard, surface, surface_dice
from napari_fewshot.evaluation.propagation import BoxPromptStep, copy_step, propagate
from napari_fewshot.evaluation.protocols import extent, query_thirds, support_slices


def test_dice_of_known_overlaps():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[0, :2, :2] = True  # 4 voxels
    b[0, :2, :] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 12)
    assert dice(a, np.zeros_like(a)) == 0.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert jaccard(a, b) == pytest.approx(4 / 8) and jaccard(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hd95_and_surface_dice_in_anisotropic_spacing():
    spacing = (3.0, 1.0, 0.5)
    truth = np.zeros((12, 5, 8), bool)
    truth[1:11, 2, 2] = True  # a line along z
    shifted = np.roll(truth, 2, axis=2)  # two columns over: 2 x 0.5 mm
    assert hd95(shifted, truth, spacing) == pytest.approx(1.0)
    assert surface_dice(shifted, truth, spacing, tolerance=1.0) == 1.0
    assert surface_dice(shifted, truth, spacing, tolerance=0.9) == 0.0
    assert average_surface_distance(shifted, truth, spacing) == pytest.approx(1.0)
    lowered = np.roll(truth, 1, axis=0)  # one slice down: the lines overlap but for one end each, 3 mm away
    assert hd95(lowered, truth, spacing) == pytest.approx(3.0)  # 2 of the 20 distances are 3 mm: above the 95th rank
    assert average_surface_distance(lowered, truth, spacing) == pytest.approx(2 * 3.0 / 20)
    far = np.zeros_like(truth)
    far[5, 2, 2] = True
    assert hd95(far, truth, spacing) == pytest.approx(np.percentile([0.0] + [3.0 * abs(z - 5) for z in range(1, 11)], 95))
    assert hd95(np.zeros_like(truth), truth, spacing) == float("inf") and surface_dice(np.zeros_like(truth), truth, spacing) == 0.0
    assert hd95(np.zeros_like(truth), np.zeros_like(truth), spacing) == 0.0


def test_hd95_matches_brute_force_on_random_shapes():
    rng = np.random.default_rng(1)
    spacing = (2.5, 0.8, 1.1)
    for _ in range(3):
        a = np.zeros((20, 30, 30), bool)
        b = np.zeros_like(a)
        a[rng.integers(0, 10) :, 5 : rng.integers(10, 30), 3:20] = True
        b[2:15, rng.integers(0, 12) : 25, rng.integers(0, 10) : 28] = True
        points = [np.argwhere(surface(m)) * spacing for m in (a, b)]
        distances = cdist(points[0], points[1])
        pooled = np.concatenate([distances.min(axis=1), distances.min(axis=0)])
        assert hd95(a, b, spacing) == pytest.approx(np.percentile(pooled, 95))
        assert surface_dice(a, b, spacing, 2.0) == pytest.approx((pooled <= 2.0).mean())


def test_support_slices_of_each_protocol():
    mask = np.zeros((30, 4, 4), bool)
    for z, width in zip(range(6, 24), [1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4, 3, 3, 3, 2, 2, 1, 1]):
        mask[z, :width, :] = True
    mask[15] = False  # a gap where the middle of the extent falls
    assert extent(mask) == (6, 23)
    assert support_slices(mask, "one-largest") == (12,)
    assert support_slices(mask, "one-middle") in ((14,), (16,))
    assert support_slices(mask, "three") == (9, 14, 21)  # 6 + [18/6, 18/2 -> gap -> nearest, 18*5/6]
    thirds = query_thirds(mask)
    assert [t.tolist() for t in thirds] == [list(range(6, 12)), list(range(12, 18)), list(range(18, 24))]
    with pytest.raises(ValueError, match="one of"):
        support_slices(mask, "two")


def test_propagation_reaches_each_slice_from_the_nearest_seed_and_stops_when_the_mask_vanishes():
    seeds = {2: np.eye(3, dtype=bool), 7: np.ones((3, 3), bool)}
    copied = propagate(seeds, 10, copy_step)
    assert [int(m.sum()) for m in copied] == [3] * 5 + [9] * 5  # slice 4 is nearer 2; 5 is nearer 7
    visits = []

    def shrinking(mask, source, target):
        visits.append((source, target))
        return mask & (np.arange(3)[:, None] < 3 - abs(target - 7))

    shrunk = propagate({7: np.ones((3, 3), bool)}, 12, shrinking)
    assert [int(m.any()) for m in shrunk] == [0] * 5 + [1] * 5 + [0] * 2
    assert (7, 8) in visits and (9, 10) in visits and (10, 11) not in visits  # stopped at the first empty mask


def test_interpolation_fills_between_painted_slices_and_nowhere_beyond():
    z, y, x = np.mgrid[:20, :40, :40]
    radius = 4 + 0.5 * (z - 2)  # a cone: its radius grows by half a pixel per slice, and its centre moves
    cone = ((y - 20) ** 2 + (x - 14 - 0.5 * z) ** 2 < radius**2) & (z >= 2) & (z <= 18)
    painting = np.zeros(cone.shape, np.uint8)
    painting[[4, 16]] = cone[[4, 16]]
    filled = interpolate(painting, (3.0, 1.0, 1.0))
    assert all(dice(filled[k], cone[k]) > 0.85 for k in range(5, 16))  # ITK's filter: 0.89-0.97 here
    assert dice(cone[4], cone[10]) < 0.6 and dice(cone[16], cone[10]) < 0.7  # copying either painted slice is worse
    assert (filled[[4, 16]] == cone[[4, 16]]).all()
    assert not filled[:4].any() and not filled[17:].any()  # the cone goes on, the interpolation does not
    one = np.zeros_like(painting)
    one[10] = cone[10]
    assert (interpolate(one, (3.0, 1.0, 1.0)) == one.astype(bool)).all()  # one painted slice: that slice alone


def test_structures_have_kinds_and_all_takes_those_on_five_slices_or_more(tmp_path):
    assert [kind(n) for n in ("liver", "Kidney_Left", "rib_right_12", "iliac_vena_left", "gluteus_minimus_right",
                              "colon", "adrenal_gland_left", "white matter", "tumour")] == [
        "large organ", "large organ", "bone", "vessel", "muscle", "bowel", "small organ or gland", "brain tissue", OTHER]
    image, truth = ellipsoids()
    truth[10:14, :4, :4] = 3  # four slices: too few
    case = read_case(_write_case(tmp_path / "case", image, truth, {"1": "liver", "2": "aorta", "3": "rib_left_7"}), ["all"])
    assert case.values == (1, 2)


def test_square_box_follows_the_padding_of_non_square_pixels():
    mask = np.zeros((32, 64), bool)
    mask[8:16, 32:48] = True  # rows twice as far apart as columns: 32 x 64 pixels is a physical square
    assert np.allclose(square_box(mask, pixel_aspect=2.0), [128, 64, 191, 127], atol=2)  # rows x8, columns x4
    assert np.allclose(square_box(mask, pixel_aspect=1.0), [128, 32, 191, 63], atol=2)  # padded to 64 x 64: x4
    assert square_box(np.zeros((8, 8)), 1.0) is None


def test_litemedsam_box_prompt_finds_a_bright_disk():
    y, x = np.mgrid[:64, :64]
    disk = (y - 30) ** 2 + (x - 34) ** 2 < 144
    image = np.stack([np.where(disk, 400.0, 0.0) + 10 * np.random.default_rng(z).normal(size=disk.shape) for z in range(3)])
    embeddings = encode_volume(image.astype(np.float32), encoder="litemedsam", device="cpu", cache=FeatureCache())
    assert embeddings.shape == (3, 256, 64, 64)
    step = BoxPromptStep(embeddings, BoxDecoder(resolve_runtime(device="cpu")))
    assert dice(step(disk, 0, 1), disk) > 0.8


def _write_case(folder, image, truth, names, spacing=(1.0, 1.0, 2.0)):
    folder.mkdir()
    for name, data in (("image", image), ("label", truth)):
        volume = sitk.GetImageFromArray(data)
        volume.SetSpacing(spacing)
        sitk.WriteImage(volume, str(folder / f"{name}.nii.gz"))
    (folder / "labels.json").write_text(json.dumps(names))
    return folder


def test_evaluate_runs_methods_side_by_side_and_writes_json_markdown_and_plots(tmp_path, capsys):
    first = _write_case(tmp_path / "first", *ellipsoids(), {"1": "bright", "2": "dark"})
    second = _write_case(tmp_path / "second", *ellipsoids(seed=3), {"1": "bright"})
    out = tmp_path / "out"
    status = main([
        "evaluate", "--case", str(first), "1", "2", "--case", str(second), "1", "--encoder", "tiny",
        "--protocols", "one-largest", "cross", "--methods", "alpnet@none", "copy", "registration",
        "--repeats", "2", "--device", "cpu", "--out", str(out),
    ])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    one = [r for r in rows if r["protocol"] == "one-largest"]
    assert len(one) == 3 * 3  # three structures, three methods
    cross = [r for r in rows if r["protocol"] == "cross"]
    assert {(r["case"], r["support"], r["method"]) for r in cross} == {("first", "second", "alpnet@none"), ("second", "first", "alpnet@none")}
    for row in rows:
        assert 0 <= row["dice"] <= 1 and 0 <= row["nsd"] <= 1 and len(row["seconds_all"]) == 2 and row["peak_mib"] > 0
    copy = [r for r in one if r["method"] == "copy"]
    assert all(r["dice"] == r["dice_extent"] for r in copy)  # the copy floor stays in the extent
    engine = next(r for r in one if r["method"] == "alpnet@none" and r["case"] == "first" and r["value"] == 1)
    assert engine["dice"] > 0.8 and engine["support_slices"] == list(support_slices(ellipsoids()[1] == 1, "one-largest"))
    assert set(results["encode"]) == {"first", "second"}
    table = (out / "results.md").read_text()
    assert "### Protocol `one-largest`" in table and "| copy |" in table and "vs `registration`" in table
    assert {r["kind"] for r in rows} == {"other"} and "| other (3) |" in table and "| all (2) |" in table
    assert (out / "dice-one-largest.png").stat().st_size > 1000 and (out / "seconds.png").is_file()
    assert "written:" in capsys.readouterr().out


def test_multi_paints_every_structure_into_one_run_and_rounds_correct_slice_by_slice(tmp_path):
    image, truth = ellipsoids(shape=(32, 48, 48))
    first = _write_case(tmp_path / "first", image, truth, {"1": "bright", "2": "dark"})
    out = tmp_path / "out"
    status = main([
        "evaluate", "--case", str(first), "1", "2", "--encoder", "tiny", "--protocols", "one-largest", "multi",
        "rounds", "--rounds", "1", "--methods", "alpnet", "copy", "--repeats", "1", "--device", "cpu",
        "--out", str(out),
    ])
    assert status == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    multi = [r for r in rows if r["protocol"] == "multi"]
    assert {(r["value"], r["method"]) for r in multi} == {(1, "alpnet"), (2, "alpnet")}  # the peers take no part
    alone = {r["value"]: r["dice"] for r in rows if r["protocol"] == "one-largest" and r["method"] == "alpnet"}
    for row in multi:  # the other's painted slice does not cut a structure off
        assert row["dice"] > alone[row["value"]] - 0.02 and row["contested"] >= row["won"] >= row["won_rightly"]
    assert multi[0]["seconds"] == multi[1]["seconds"]  # one run for both
    rounds = [r for r in rows if r["protocol"] == "rounds"]
    assert len(rounds) == 2 * 3 * 2  # two structures, three choosers, the first run and one round
    for chooser in ("check", "oracle", "plan"):
        mine = sorted((r for r in rounds if r["chooser"] == chooser and r["value"] == 1), key=lambda r: r["round"])
        assert [r["round"] for r in mine] == [0, 1] and mine[0]["action"] == "first"
        assert mine[1]["action"] in ("painted", "absent", "stopped") and mine[1]["slice"] not in mine[0]["support_slices"]
    oracle = sorted((r for r in rounds if r["chooser"] == "oracle" and r["value"] == 2), key=lambda r: r["round"])
    assert oracle[-1]["dice"] >= oracle[0]["dice"] - 0.01
    table = (out / "results.md").read_text()
    assert "### Protocol `rounds`" in table and "| oracle |" in table and "area under" in table
    assert "against one structure per run (`one-largest`)" in table and "claimed by two structures" in table


def test_methods_are_named_by_head_weights_and_components_kept():
    engine = method("dspnet@none:largest")
    assert (engine.name, engine.head, engine.weights, engine.options.keep) == ("dspnet@none:largest", "dspnet", "none", "largest")
    assert (method("alpnet").weights, method("alpnet").options.keep) == ("default", "painted")
    assert method("copy").name == "copy" and not method("copy").cross_volume and method("panet@none").cross_volume
    between, past = method("alpnet+nobetween").options, method("alpnet+nopast").options
    assert (between.hold_between, between.hold_past, past.hold_between, past.hold_past) == (False, None, None, False)
    with pytest.raises(ValueError, match="keep must be one of all, largest, painted"):
        method("alpnet:biggest")
    with pytest.raises(ValueError, match="weights must be default, none or a model file"):
        method("alpnet@missing.safetensors")


def test_threshold_flag_sets_the_engines_threshold_and_refuses_what_is_not_a_probability():
    assert method("alpnet+threshold=0.35+nopast").options.threshold == 0.35
    assert method("alpnet").options.threshold == 0.5
    with pytest.raises(ValueError, match="threshold=high: 'high' is not a number"):
        method("alpnet+threshold=high")
    with pytest.raises(ValueError, match=r"threshold must be a probability between 0 and 1 \(exclusive\); got 1.5"):
        method("alpnet+threshold=1.5")
    with pytest.raises(ValueError, match="size=3 is not one of the flags threshold=VALUE, nolocation, .*, nofollow"):
        method("alpnet+size=3")


def test_evaluate_refuses_unknown_methods_and_missing_labels(tmp_path, capsys):
    case = _write_case(tmp_path / "case", *ellipsoids(), {})
    assert main(["evaluate", "--case", str(case), "1", "--methods", "sam2", "--out", str(tmp_path / "o")]) == 1
    assert "unknown method 'sam2'" in capsys.readouterr().err
    assert main(["evaluate", "--case", str(case), "7", "--methods", "copy", "--out", str(tmp_path / "o")]) == 1
    assert "label values [7] do not occur" in capsys.readouterr().err


def test_evaluate_refuses_bad_settings_before_reading_cases_and_bad_case_folders_by_name(tmp_path, capsys):
    from napari_fewshot.evaluation.run import check_settings

    missing = str(tmp_path / "no-such-case")
    for flag, value, says in (("--repeats", "0", "--repeats must be at least 1 (runs per method and task); got 0"),
                              ("--rounds", "-1", "--rounds must be 0 or more"),
                              ("--nsd-mm", "nan", "--nsd-mm must be a finite length in mm above 0; got nan")):
        assert main(["evaluate", "--case", missing, "1", "--methods", "copy", "--out", str(tmp_path / "o"),
                     flag, value]) == 1
        assert capsys.readouterr().err.startswith(f"error: {says}")  # not the missing case: the settings come first
    with pytest.raises(ValueError, match="--repeats must be at least 1"):
        check_settings(0, 3, 1.0)
    image, truth = ellipsoids((6, 16, 16))
    case = _write_case(tmp_path / "case", image, truth, ["liver"])
    with pytest.raises(ValueError, match=f"^{case / 'labels.json'} must map label values to structure names, but "
                       'holds a JSON list; write it as {"1": "liver", "2": "spleen"}$'):
        read_case(case, [1])
    (case / "labels.json").write_text("{1: liver")
    with pytest.raises(ValueError, match=f"^{case / 'labels.json'} is not valid JSON \\(Expecting property name"):
        read_case(case, [1])
    (case / "labels.json").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(image), str(case / "image.nrrd"))
    with pytest.raises(ValueError, match=f"^{case} has 2 image files \\(image.nii.gz, image.nrrd\\); keep the one"):
        read_case(case, [1])
    with pytest.raises(ValueError, match=r"cannot be read \(File name too long\); give the folder of a case$"):
        read_case(tmp_path / ("a" * 300), [1])


def test_evaluate_refuses_a_cache_that_is_no_folder_before_reading_the_cases(tmp_path, capsys):
    (tmp_path / "features").write_text("not a folder")
    assert main(["evaluate", "--case", str(tmp_path / "no-such-case"), "1", "--methods", "copy",
                 "--cache", str(tmp_path / "features"), "--out", str(tmp_path / "out")]) == 1
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "features: this is a file, not a folder" in said and "no-such-case" not in said
