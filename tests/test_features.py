"""The feature cache on disk: kept across processes, damaged files refused, a size cap."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch

from conftest import cli, ellipsoids, write_itk
from napari_fewshot.core.engine import segment
from napari_fewshot.core.features import FeatureCache, VolumeFeatures


def _encoded(stdout: str) -> int:
    return int(re.search(r"encoding (\d+) slices", stdout).group(1))


def test_a_later_process_reads_the_saved_features_instead_of_encoding(tmp_path):
    image, truth = ellipsoids()
    support = np.zeros_like(truth)
    support[12] = truth[12]
    write_itk(tmp_path / "image.nii.gz", image)
    write_itk(tmp_path / "support_labels.nii.gz", support)
    args = ["segment", "--image", str(tmp_path / "image.nii.gz"), "--support-labels", str(tmp_path / "support_labels.nii.gz"),
            "--encoder", "tiny", "--device", "cpu"]
    env = {**os.environ, "NAPARI_FEWSHOT_CACHE": str(tmp_path / "cache")}
    first = cli(*args, "--output", str(tmp_path / "first.nii.gz"), env=env)
    assert first.returncode == 0, first.stderr
    assert _encoded(first.stdout) > 0 and list((tmp_path / "cache" / "features").glob("*.safetensors"))
    again = cli(*args, "--output", str(tmp_path / "again.nii.gz"), env=env)
    assert _encoded(again.stdout) == 0  # a new process, nothing encoded
    off = cli(*args, "--output", str(tmp_path / "off.nii.gz"), "--no-disk-cache", env=env)
    assert _encoded(off.stdout) == _encoded(first.stdout)
    assert (tmp_path / "first.nii.gz").read_bytes() == (tmp_path / "again.nii.gz").read_bytes()


def test_a_damaged_file_is_said_removed_and_encoded_again(tmp_path, caplog):
    image, truth = ellipsoids()
    support = np.zeros_like(truth)
    support[12] = truth[12]
    first = segment(image, support, encoder="tiny", cache=FeatureCache(folder=tmp_path))
    (saved,) = tmp_path.glob("*.safetensors")
    saved.write_bytes(saved.read_bytes()[:1000])  # cut short, as by a full disk or a crash
    with caplog.at_level(logging.WARNING):
        again = segment(image, support, encoder="tiny", cache=FeatureCache(folder=tmp_path))
    assert "cached features are damaged" in caplog.text and str(saved) in caplog.text
    assert again.encoded_slices == first.encoded_slices
    np.testing.assert_array_equal(again.labels, first.labels)


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
