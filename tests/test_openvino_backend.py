"""OpenVINO on the CPU against torch: the same features and masks, converted once, rebuilt for new weights."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_fewshot
from napari_fewshot.core.encoders import build_encoder
from napari_fewshot.core.store import DEFAULT_STORE
from napari_fewshot.core.errors import SegmentationCancelled
from napari_fewshot.core.features import encoder_fingerprint
from napari_fewshot.core.openvino_backend import OpenVINOTrunk, _Trunk, converted_model, model_folder
from napari_fewshot.core.prepare import is_prepared
from napari_fewshot.core.preprocess import Preprocessing, normalise_intensities, to_encoder_slices
from napari_fewshot.core.backends import resolve_runtime
from napari_fewshot.core.sam_decoder import BoxDecoder, square_box
from napari_fewshot.io import read_volume

SAMPLE = Path(napari_fewshot.__file__).parent / "sample_data"
#: float32 features of the two backends differ by rounding only: far below the cache's bfloat16 step (~4e-3 relative)
FEATURE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ct_slices() -> torch.Tensor:
    """Two real slices of the packaged abdominal CT (one through the liver), as LiteMedSAM's input [2, 3, 256, 256]."""
    volume = read_volume(SAMPLE / "abdomen_ct.nii.gz")
    spacing = volume.geometry.spacing[::-1]
    slices = normalise_intensities(volume.data[[10, 42]], Preprocessing("CT"))
    return to_encoder_slices(slices, 256, spacing[1] / spacing[2])


@pytest.fixture(scope="module")
def litemedsam():
    return DEFAULT_STORE.encoder("litemedsam", torch.device("cpu"))


def test_litemedsam_features_match_torchs_on_a_real_slice(ct_slices, litemedsam):
    with torch.inference_mode():
        torch_features = litemedsam.trunk(ct_slices)
    openvino = OpenVINOTrunk(litemedsam, resolve_runtime("openvino", "f32", "cpu"))
    features = openvino(ct_slices)
    assert features.shape == (2, 256, 64, 64) and features.dtype == torch.float32
    assert (features - torch_features).abs().max() < FEATURE_TOLERANCE * torch_features.abs().max()
    reduced = OpenVINOTrunk(litemedsam, resolve_runtime("openvino", "bf16", "cpu"))
    if reduced.runtime.precision == "bf16":  # where the CPU has bfloat16; elsewhere it runs at f32
        cosine = torch.nn.functional.cosine_similarity(reduced(ct_slices).flatten(1), torch_features.flatten(1))
        assert (cosine > 0.99).all() and (cosine < 1 - 1e-6).all()  # close, and really another precision


def test_the_decoder_draws_the_same_masks_from_the_same_boxes(ct_slices, litemedsam):
    with torch.inference_mode():
        embeddings = litemedsam.trunk(ct_slices)
    liver = read_volume(SAMPLE / "abdomen_ct_liver_support.nii.gz", kind="labels").data[42] > 0
    boxes = np.stack([square_box(liver), np.array([30.0, 40.0, 200.0, 180.0], np.float32)])
    shape = liver.shape
    torch_masks = BoxDecoder(resolve_runtime("torch", "f32", "cpu")).decode(embeddings, boxes, shape)
    openvino_masks = BoxDecoder(resolve_runtime("openvino", "f32", "cpu")).decode(embeddings, boxes, shape)
    assert torch_masks[0].sum() > 500  # the liver, drawn
    # logits agree to ~1e-5: a pixel could flip only where a logit sits that close to 0
    assert np.count_nonzero(torch_masks != openvino_masks) <= 2


def _convert_in_a_new_process(cache: Path, scale: float, precision: str = "f32") -> subprocess.CompletedProcess:
    """A new process builds the tiny encoder (weights times ``scale``) on OpenVINO at ``precision`` and prints
    its features' sum (and torch's)."""
    code = (
        "import torch, logging; logging.basicConfig(format='%(message)s')\n"
        "from napari_fewshot.core.encoders import build_encoder\n"
        "from napari_fewshot.core.openvino_backend import OpenVINOTrunk\n"
        "from napari_fewshot.core.backends import resolve_runtime\n"
        "encoder = build_encoder('tiny')\n"
        f"with torch.no_grad():\n    [p.mul_({scale}) for p in encoder.parameters()]\n"
        "x = torch.linspace(0, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)\n"
        f"features = OpenVINOTrunk(encoder, resolve_runtime('openvino', '{precision}', 'cpu'))(x)\n"
        "print(float(features.double().sum()), float(encoder.trunk(x).double().sum()))\n"
    )
    env = {**__import__("os").environ, "NAPARI_FEWSHOT_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done


def test_two_conversions_of_one_model_at_once_make_it_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    encoder, example = build_encoder("tiny"), [torch.rand(1, 3, 64, 64)]
    digest = encoder_fingerprint(encoder)
    made = []
    threads = [threading.Thread(target=lambda: made.append(converted_model(_Trunk(encoder), example, "t", digest)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 2 and made[0] == made[1] and made[0].is_file()  # both get the one file
    assert caplog.text.count("converting t to OpenVINO") == 1  # the second waited for the first


def test_conversions_are_kept_for_the_next_process_and_made_anew_for_new_weights(tmp_path):
    first = _convert_in_a_new_process(tmp_path, 1.0)
    assert "converting tiny-trunk to OpenVINO" in first.stderr
    models = sorted((tmp_path / "openvino").glob("*.xml"))
    assert len(models) == 1 and models[0].with_suffix(".bin").is_file()
    written = models[0].stat().st_mtime_ns

    second = _convert_in_a_new_process(tmp_path, 1.0)
    assert "converting" not in second.stderr  # compiled from the saved file
    assert models[0].stat().st_mtime_ns == written
    assert second.stdout == first.stdout

    changed = _convert_in_a_new_process(tmp_path, 1.5)
    assert "converting tiny-trunk to OpenVINO" in changed.stderr
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 2
    openvino_sum, torch_sum = map(float, changed.stdout.split())
    assert openvino_sum == pytest.approx(torch_sum, rel=1e-4)  # the new weights, not the old file's
    assert openvino_sum != pytest.approx(float(first.stdout.split()[0]), rel=1e-2)


def test_is_prepared_once_the_trunk_is_converted_for_its_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    f32, int8 = resolve_runtime("openvino", "f32", "cpu"), resolve_runtime("openvino", "int8", "cpu")
    assert is_prepared("tiny", resolve_runtime("torch", "f32", "cpu"))  # nothing to convert
    assert not is_prepared("tiny", f32)
    OpenVINOTrunk(build_encoder("tiny"), f32)
    assert is_prepared("tiny", f32) and not is_prepared("tiny", int8) and not is_prepared("litemedsam", f32)
    next(model_folder().glob("tiny-trunk-*.bin")).unlink()  # a file gone: converted again on the next run
    assert not is_prepared("tiny", f32)


def test_int8_is_quantized_once_and_reused_by_the_next_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    encoder = build_encoder("tiny")
    x = torch.linspace(0, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    trunk = OpenVINOTrunk(encoder, resolve_runtime("openvino", "int8", "cpu"))
    assert "quantizing tiny-trunk to int8 on 16 calibration slices (once for these weights" in caplog.text
    assert trunk.runtime.precision == "int8"
    int8 = sorted(model_folder().glob("tiny-trunk-int8-*.xml"))
    assert len(int8) == 1 and len(list(model_folder().glob("*.xml"))) == 2  # the float32 conversion it started from
    assert "FakeQuantize" in int8[0].read_text()[:2_000_000]  # quantized, not a copy of the float32 model
    with torch.no_grad():
        features, exact = trunk(x), encoder.trunk(x)
    cosine = torch.nn.functional.cosine_similarity(features.flatten(), exact.flatten(), dim=0)
    assert 0.9 < cosine < 1 - 1e-7, cosine  # close to float32, and not float32

    again = _convert_in_a_new_process(tmp_path, 1.0, "int8")
    assert "converting" not in again.stderr and "quantizing" not in again.stderr, again.stderr
    assert float(again.stdout.split()[0]) == pytest.approx(float(features.double().sum()), rel=1e-5)
    assert sorted(model_folder().glob("tiny-trunk-int8-*.xml")) == int8


def test_a_damaged_conversion_is_made_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    encoder, runtime = build_encoder("tiny"), resolve_runtime("openvino", "f32", "cpu")
    x = torch.rand(2, 3, 64, 64)
    OpenVINOTrunk(encoder, runtime)
    (model,) = model_folder().glob("*.xml")
    model.write_text("<net>not a model")
    trunk = OpenVINOTrunk(encoder, runtime)
    assert "does not compile" in caplog.text
    with torch.no_grad():
        assert torch.allclose(trunk(x), encoder.trunk(x), atol=1e-5)


@pytest.mark.parametrize("blocked, precision", [("a file in the cache's place", "f32"), ("a full disk", "f32"),
                                               ("a file in the cache's place", "int8")])
def test_a_cache_that_cannot_hold_the_conversion_runs_it_from_memory(tmp_path, monkeypatch, caplog, request, blocked,
                                                                     precision):
    full = contextlib.nullcontext()
    if blocked == "a file in the cache's place":
        cache = tmp_path / "cache"
        cache.write_text("not a folder")
    else:
        disk = request.getfixturevalue("small_disk")
        cache, full = disk.folder, disk.full()
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(cache))
    encoder, x = build_encoder("tiny"), torch.rand(2, 3, 64, 64)
    with full:
        trunk = OpenVINOTrunk(encoder, resolve_runtime("openvino", precision, "cpu"))
    with torch.no_grad():
        features, exact = trunk(x), encoder.trunk(x)
    if precision == "f32":
        assert torch.allclose(features, exact, atol=1e-5)  # OpenVINO, not a fall back to torch
    else:  # quantized in memory: close, not equal
        assert "quantizing tiny-trunk to int8 on 16 calibration slices (in memory" in caplog.text
        assert 0.9 < torch.nn.functional.cosine_similarity(features.flatten(), exact.flatten(), dim=0) < 1 - 1e-7
    warned = [r.getMessage() for r in caplog.records if "not cached on disk" in r.getMessage()]
    assert len(warned) == 1 and "NAPARI_FEWSHOT_CACHE" in warned[0], caplog.text
    assert "in memory" in caplog.text or blocked == "a full disk"
    assert "running torch" not in caplog.text and not list(tmp_path.rglob("*.xml")), caplog.text


def test_openvino_asks_cancel_before_each_slice(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    trunk = OpenVINOTrunk(build_encoder("tiny"), resolve_runtime("openvino", "f32", "cpu"))
    asked = []
    with pytest.raises(SegmentationCancelled):
        trunk(torch.rand(6, 3, 64, 64), lambda: asked.append(1) or len(asked) > 3)
    assert len(asked) == 4
    assert trunk(torch.rand(2, 3, 64, 64)).shape == (2, 64, 32, 32)  # usable after a cancel
