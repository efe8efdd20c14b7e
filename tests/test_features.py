"""The feature cache on disk: kept across processes, damaged files refused, a size cap, optional where it cannot
be written."""

from __future__ import annotations

import contextlib
import logging
import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import cli, ellipsoids, obey_permissions, write_itk
from napari_fewshot.core.engine import FewShotSession
from napari_fewshot.core.features import FeatureCache, VolumeFeatures


def _encoded(stdout: str) -> int:
    return int(re.search(r"encoding (\d+) slices", stdout).group(1))


def _tiny_session(image: np.ndarray, cache: FeatureCache) -> FewShotSession:
    return FewShotSession(image, encoder="tiny", device="cpu", backend="torch", cache=cache)


def test_a_later_process_reads_the_saved_features_even_from_a_read_only_folder_that_it_cannot_add_to(tmp_path):
    image, truth = ellipsoids()
    other, other_truth = ellipsoids(seed=1)
    support, other_support = np.zeros_like(truth), np.zeros_like(other_truth)
    support[12], other_support[12] = truth[12], other_truth[12]
    files = {name: str(write_itk(tmp_path / f"{name}.nii.gz", data)) for name, data in (
        ("image", image), ("support_labels", support), ("other", other), ("other_labels", other_support))}
    args = ["segment", "--image", files["image"], "--encoder", "tiny", "--device", "cpu"]
    env = {**os.environ, "NAPARI_FEWSHOT_CACHE": str(tmp_path / "cache")}
    first = cli(*args, "--support-labels", files["support_labels"], "--output", str(tmp_path / "first.nii.gz"), env=env)
    assert first.returncode == 0, first.stderr
    assert _encoded(first.stdout) > 0 and list((tmp_path / "cache" / "features").glob("*.safetensors"))
    folders = [tmp_path / "cache", tmp_path / "cache" / "features"]
    for folder in folders:
        folder.chmod(0o555)
    as_a_user = obey_permissions if os.geteuid() == 0 else None  # file modes bind root too
    try:
        again = cli(*args, "--support-labels", files["support_labels"], "--output", str(tmp_path / "again.nii.gz"),
                    env=env, preexec_fn=as_a_user)
        # the support painted on another scan, whose features the read-only folder lacks and cannot take
        other_run = cli(*args, "--support-image", files["other"], "--support-labels", files["other_labels"],
                        "--output", str(tmp_path / "from_other.nii.gz"), env=env, preexec_fn=as_a_user)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert _encoded(again.stdout) == 0 and "not cached" not in again.stderr  # a new process, nothing encoded
    assert (tmp_path / "first.nii.gz").read_bytes() == (tmp_path / "again.nii.gz").read_bytes()
    assert other_run.returncode == 0 and "Traceback" not in other_run.stderr and (tmp_path / "from_other.nii.gz").is_file()
    said = [line for line in other_run.stderr.replace("\r", "\n").splitlines() if "not cached" in line]
    assert len(said) == 1 and "is not writable" in said[0] and "NAPARI_FEWSHOT_CACHE" in said[0], other_run.stderr


@pytest.mark.parametrize("damage", ["cut short", "another shape", "another type"])
def test_a_damaged_file_is_said_removed_and_encoded_again(tmp_path, caplog, damage):
    image = ellipsoids((4, 32, 32))[0]
    first = _tiny_session(image, FeatureCache(folder=tmp_path))
    first.encode()
    path = first.cache._path(first.key)
    if damage == "cut short":  # as by a crash
        path.write_bytes(path.read_bytes()[:1000])
    else:  # under this scan's key, features that cannot be its own: the tiny trunk gives 64x32x32, saved as bfloat16
        wrong = {"another shape": torch.ones((4, 64, 8, 8), dtype=torch.bfloat16),
                 "another type": torch.ones((4, 64, 32, 32), dtype=torch.float32)}[damage]
        save_file({"features": wrong, "slices": torch.arange(4)}, str(path), {"key": first.key, "n_slices": "4"})
    later = _tiny_session(image, FeatureCache(folder=tmp_path))  # a later process
    with caplog.at_level(logging.WARNING):
        assert later.encode() == 4
    assert "cached features are damaged" in caplog.text and str(path) in caplog.text
    assert torch.equal(later.features.tensor, first.features.tensor)
    replaced = _tiny_session(image, FeatureCache(folder=tmp_path)).features  # read back from the file written anew
    assert replaced.encoded.all() and torch.equal(replaced.tensor, first.features.tensor)


def test_the_folder_keeps_under_its_size_cap_dropping_the_least_recently_used(tmp_path):
    one_volume = 8 * 64 * 4 * 4 * 2  # 8 slices of 64x4x4 bfloat16
    cache = FeatureCache(folder=tmp_path, max_disk_bytes=int(2.5 * one_volume))
    for name in ("a", "b", "c"):
        features = VolumeFeatures(8)
        features.tensor = torch.full((8, 64, 4, 4), float(ord(name)), dtype=torch.bfloat16)
        features.encoded[:] = True
        cache.put(name, features)
        cache.save(name)
        os.utime(cache._path(name), (0, {"a": 1, "b": 3, "c": 2}[name]))  # "b" used last, then "c"
    later = FeatureCache(folder=tmp_path, max_disk_bytes=int(2.5 * one_volume))
    features = VolumeFeatures(8)
    features.tensor = torch.zeros((8, 64, 4, 4), dtype=torch.bfloat16)
    features.encoded[:4] = True
    later.put("d", features)
    later.save("d")
    assert later.get("a") is None  # the least recently used went
    assert later.get("b") is not None and later.get("d").encoded.sum() == 4
    assert sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) <= 2.5 * one_volume + 1024


@pytest.mark.parametrize(("fault", "reason"), [
    ("a file in its place", "this is a file, not a folder"),
    ("a file on its way", "is a file, so no folder can be created under it"),
    ("a folder at the file's path", "is a folder where a cache file goes"),
    ("a full disk", "No space left on device|File too large"),  # a small tmpfs, or the write-limit shim
])
def test_a_cache_folder_that_cannot_be_written_is_said_once_and_encoding_goes_on(tmp_path, caplog, request, fault,
                                                                                  reason):
    image, other = ellipsoids((4, 32, 32))[0], ellipsoids((4, 32, 32), seed=1)[0]
    folder, full = tmp_path / "features", contextlib.nullcontext()
    if fault == "a file in its place":
        folder.write_text("not a folder")
    elif fault == "a file on its way":
        (tmp_path / "cache").write_text("not a folder")
        folder = tmp_path / "cache" / "features"
    elif fault == "a full disk":
        disk = request.getfixturevalue("small_disk")
        folder, full = disk.folder, disk.full()
    cache = FeatureCache(folder=folder, advice="give another folder")
    session = _tiny_session(image, cache)
    if fault == "a folder at the file's path":
        cache._path(session.key).mkdir(parents=True)  # someone's folder: it stays
    with caplog.at_level(logging.WARNING), full:
        assert session.encode() == 4  # the run goes on
        assert _tiny_session(other, cache).encode() == 4  # and the next scan's, without a second word
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].startswith("features are not cached on disk") and said[0].endswith(
        "(give another folder)") and re.search(reason, said[0])
    memory_only = _tiny_session(image, FeatureCache())
    memory_only.encode()
    assert torch.equal(session.features.tensor, memory_only.features.tensor)
    left = [path.name for path in folder.iterdir() if path.name != "filler"] if folder.is_dir() else []
    if fault == "a folder at the file's path":  # kept, the other scan saved beside it, nothing half-written
        assert cache._path(session.key).is_dir() and len(left) == 2 and not any(".partial" in name for name in left)
    else:
        assert left == []
