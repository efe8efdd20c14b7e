"""The dock widget in a real napari viewer (under Xvfb): segment, correct, cancel, export, bad states.

Runs go through the real thread worker; the tests wait on the runner with
``qtbot.waitUntil``.  The ``tiny`` encoder keeps them fast; a slowed copy of it
(registered by name, like any encoder) gives runs long enough to cancel.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt, QTimer

from conftest import DIRECTIONS, dice, ellipsoids, write_itk
import napari_fewshot._napari.widget as widget_module
from napari_fewshot.core.encoders import ENCODERS
from napari_fewshot.core.encoders.tiny import TinyEncoder
from napari_fewshot.core.backends import resolve_runtime
from napari_fewshot.core.features import DEFAULT_CACHE
from napari_fewshot.core.prepare import is_prepared, prepare_key
from napari_fewshot.core.rates import measured_rate
from napari_fewshot.core.refined import REFINED_FILE
from napari_fewshot.io import Geometry, read_volume
from napari_fewshot.io.orientation import closest_canonical, to_view

PLUGIN = "napari-fewshot"
WIDGET = "Few-shot segmentation"
PAINTED = 12


class SlowEncoder(TinyEncoder):
    """The test encoder at a tenth of a second per batch: runs that last long enough to cancel."""

    name = "slow"

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        return super().trunk(x)


class CountingEncoder(SlowEncoder):
    """The slow encoder at 0.2 s per batch, noting the most encodings that ever ran at once."""

    name = "counting"
    running = most = 0
    lock = threading.Lock()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        with CountingEncoder.lock:
            CountingEncoder.running += 1
            CountingEncoder.most = max(CountingEncoder.most, CountingEncoder.running)
        try:
            time.sleep(0.1)
            return super().trunk(x)
        finally:
            with CountingEncoder.lock:
                CountingEncoder.running -= 1


@pytest.fixture
def scan(tmp_path):
    """An MR-like volume written as a RAS-stored NIfTI file, and its truth in the viewer's layout."""
    image, truth = ellipsoids(seed=7)
    path = write_itk(tmp_path / "scan.nii.gz", image, spacing=(0.9, 0.9, 2.0), direction=DIRECTIONS["ras-flip"])
    geometry = read_volume(path).geometry
    return path, to_view(truth, closest_canonical(geometry))


@pytest.fixture
def session(make_napari_viewer, scan, monkeypatch, tmp_path):
    """A viewer showing the scan, the docked widget on the tiny encoder, and a support painted on one slice."""
    monkeypatch.setitem(ENCODERS, "slow", SlowEncoder)
    monkeypatch.setitem(ENCODERS, "counting", CountingEncoder)
    monkeypatch.setattr(widget_module, "ENCODE_AHEAD", False)  # tests that count encoded slices start none ahead
    DEFAULT_CACHE.clear()  # each test counts the slices it encodes
    monkeypatch.setattr(DEFAULT_CACHE, "folder", tmp_path / "features")  # and finds no other test's saved
    path, truth = scan
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(path, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.encoder.value, widget.head.value, widget.names.value = "tiny", "alpnet", "bright, dark"
    support = widget.add_support_layer()
    support.data_setitem(np.nonzero(_slice_mask(truth, PAINTED)), truth[_slice_mask(truth, PAINTED)])
    notification_manager.records.clear()
    return viewer, widget, image, support, truth


def _slice_mask(volume: np.ndarray, z: int) -> np.ndarray:
    mask = np.zeros(volume.shape, bool)
    mask[z] = volume[z] > 0
    return mask


def _run(qtbot, widget, button, timeout: int = 60_000) -> None:
    button.native.click()
    qtbot.waitUntil(lambda: not widget._runner.busy, timeout=timeout)


def _go_to(viewer, z: int) -> None:
    viewer.dims.set_current_step(0, z)


def _messages() -> list[str]:
    return [str(record.message) for record in notification_manager.records]


def test_segment_volume_gives_a_prediction_on_the_image_grid_and_maps(qtbot, session):
    viewer, widget, image, support, truth = session
    painted = np.array(support.data, copy=True)
    _run(qtbot, widget, widget.segmenting.volume_button)

    prediction = viewer.layers["scan prediction"]
    assert prediction._type_string == "labels" and prediction is not support
    np.testing.assert_array_equal(support.data, painted)  # the support is never written to
    np.testing.assert_allclose(prediction.scale, image.scale)
    np.testing.assert_allclose(prediction.translate, image.translate)
    assert prediction.metadata["geometry"] == image.metadata["geometry"]
    assert dice(prediction.data == 1, truth == 1) > 0.85 and dice(prediction.data == 2, truth == 2) > 0.8
    assert list(prediction.features["name"]) == ["bright", "dark"]
    record = prediction.metadata["napari_fewshot"]
    assert record["support_slices"] == {"1": [PAINTED], "2": [PAINTED]} and record["encoder"] == "tiny"
    assert record["boundaries"] == {"1": "prototype", "2": "prototype"}  # auto: no LiteMedSAM embeddings to decode

    for name in ("bright", "dark"):
        attention = viewer.layers[f"scan {name} attention"]
        assert attention.data.shape == image.data.shape and not attention.visible and attention.blending == "additive"
    attention = viewer.layers["scan bright attention"]
    bright = attention.data
    assert bright[truth == 1].mean() > bright[truth == 0].mean()
    # the tint starts above most of the rest of the scan, so the structure stands out
    low, high = attention.contrast_limits
    assert (bright[prediction.data != 1] < low).mean() > 0.9 and low < high <= bright.max() + 1e-6
    assert (bright[truth == 1] > low).mean() > 0.8
    assert widget.exporting.layer.value is prediction
    assert "Segmented the volume" in widget.status.value
    assert viewer.layers.selection.active == support  # painting goes on on the support, not on a new layer
    assert viewer.dims.axis_labels[0] == "axial (I→S)"

    # the slices worth a look and why: where each structure begins and ends, then the weakest; a click goes there
    listed = list(widget.correcting.check.choices)
    assert 0 < len(listed) <= 10 and PAINTED not in [z for z, _ in listed]
    text = [widget.correcting.check.native.item(i).text() for i in range(widget.correcting.check.native.count())]
    for value, name in ((1, "bright"), (2, "dark")):
        held = np.flatnonzero((prediction.data == value).any(axis=(1, 2)))
        assert 0 < held[0] and held[-1] < len(prediction.data) - 1  # both end inside the volume
        assert f"slice {held[0]}: {name} begins here: is the slice before empty?" in "; ".join(text)
        assert any(t.startswith(f"slice {held[-1]}: ") and f"{name} ends here" in t for t in text)
    # the list stays when another layer comes and goes (napari resets the widget's choices then)
    other = viewer.add_points([[1, 2, 3]], name="unrelated")
    viewer.layers.remove(other)
    assert list(widget.correcting.check.choices) == listed
    assert text[0].startswith("next: slice ")  # the top says which slice to look at next, and for which structure
    z, structure = listed[-1]
    support.selected_label = 3 - structure
    widget.correcting.check.value = [listed[-1]]
    assert viewer.dims.current_step[0] == z and support.selected_label == structure

    # Follow anatomy unticked: registration leaves the boundaries alone, and the run's record says so
    assert record["follow_anatomy"] is True and record["keep"] == "painted"  # the options as the run resolved them
    widget.segmenting.options["follow_anatomy"].value = False
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert viewer.layers["scan prediction"].metadata["napari_fewshot"]["follow_anatomy"] is False


def test_structures_painted_on_their_own_slices_each_reach_their_full_extent(qtbot, session):
    viewer, widget, image, support, truth = session
    support.data = np.zeros_like(support.data)
    for value, z in ((1, 9), (2, 15)):
        support.data[z][truth[z] == value] = value
    _run(qtbot, widget, widget.segmenting.volume_button)
    prediction = viewer.layers["scan prediction"]
    for value in (1, 2):  # neither stops at the slice painted for the other
        held = set(np.flatnonzero((prediction.data == value).any(axis=(1, 2))))
        assert {z for z in range(24) if (truth[z] == value).sum() > 20} <= held
        assert dice(prediction.data == value, truth == value) > 0.8
    assert prediction.metadata["napari_fewshot"]["support_slices"] == {"1": [9], "2": [15]}


def test_segment_slice_previews_the_slice_on_screen_and_encodes_little(qtbot, session):
    viewer, widget, image, support, truth = session
    _go_to(viewer, 16)
    before = DEFAULT_CACHE.stats.encoded_slices
    _run(qtbot, widget, widget.segmenting.slice_button)
    assert DEFAULT_CACHE.stats.encoded_slices - before == 2  # the slice on screen and the painted one
    prediction = viewer.layers["scan prediction"]
    assert np.flatnonzero(prediction.data.any(axis=(1, 2))).tolist() == [16]
    assert dice(prediction.data[16] == 1, truth[16] == 1) > 0.8

    _run(qtbot, widget, widget.segmenting.volume_button)  # the volume encodes only the 22 slices left
    assert DEFAULT_CACHE.stats.encoded_slices - before == 24


def test_correction_loop_reuses_the_features_and_keeps_every_correction(qtbot, session):
    viewer, widget, image, support, truth = session
    before = DEFAULT_CACHE.stats.encoded_slices
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert DEFAULT_CACHE.stats.encoded_slices - before == 24
    prediction = viewer.layers["scan prediction"]

    # fix slice 6 by hand and add it to the support; undo takes it back, redo brings it again
    prediction.data_setitem(np.nonzero(_slice_mask(truth, 6)), truth[_slice_mask(truth, 6)])
    _go_to(viewer, 6)
    widget.correcting.add.native.click()
    np.testing.assert_array_equal(support.data[6], prediction.data[6])
    support.undo()
    assert not support.data[6].any()
    support.redo()
    np.testing.assert_array_equal(support.data[6], prediction.data[6])

    # a slice corrected by hand but not added: the next run adds it rather than losing it
    corrected = prediction.data[18].copy()
    corrected[:5, :5] = 2
    prediction.data_setitem(np.nonzero(np.ones_like(corrected, bool)[None] & (np.arange(24) == 18)[:, None, None]), corrected.ravel())
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert DEFAULT_CACHE.stats.encoded_slices - before == 24  # head only
    np.testing.assert_array_equal(support.data[18], corrected)
    np.testing.assert_array_equal(prediction.data[18], corrected)  # painted slices keep what was painted
    assert viewer.layers["scan prediction"] is prediction  # updated in place
    assert any("Slices 18 corrected" in message for message in _messages())
    assert prediction.metadata["napari_fewshot"]["support_slices"]["1"] == [6, PAINTED, 18]

    # a structure erased from a slice is absent there and past there; another kept on that slice is painted
    assert (prediction.data[8] == 2).any() and (prediction.data[8] == 1).any() and prediction.data[4].any()
    prediction.data_setitem(np.nonzero((prediction.data == 2) & (np.arange(24) == 8)[:, None, None]), 0)
    _go_to(viewer, 4)  # a slice emptied and added: every structure is absent there
    prediction.data_setitem(np.nonzero(np.arange(24)[:, None, None] == np.full((1, 48, 48), 4)), 0)
    widget.correcting.add.native.click()
    assert "Slice 4 is empty: bright, dark marked absent there" in widget.status.value
    _run(qtbot, widget, widget.segmenting.volume_button)
    held = {v: np.flatnonzero((prediction.data == v).any(axis=(1, 2))) for v in (1, 2)}
    assert held[1].min() > 4 and held[2].min() > 4  # absent on 4, below every painting: nothing there or below
    assert 8 in held[1] and 8 not in held[2] and {7, 9} <= set(held[2])  # dark painted on 6 and 12: 8 alone goes
    assert prediction.metadata["napari_fewshot"]["absent_slices"] == {"1": [4], "2": [4, 8]}
    assert any("marked absent (nothing of it there or past there): bright on slice 4; dark on slice 8" in m
               for m in _messages())


def test_the_prediction_fills_in_as_batches_finish_and_cancel_keeps_them(qtbot, session):
    viewer, widget, image, support, truth = session
    _run(qtbot, widget, widget.segmenting.volume_button)
    before = np.array(viewer.layers["scan prediction"].data, copy=True)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    widget.encoder.value = "slow"
    widget.segmenting.volume_button.native.click()
    prediction = viewer.layers["scan prediction"]

    def filled() -> set[int]:
        return set(np.flatnonzero(prediction.data.any(axis=(1, 2))).tolist())

    # the layer is emptied for the new run, then the painted slice and its neighbours appear while it goes on
    whole = len(np.flatnonzero(before.any(axis=(1, 2))))
    qtbot.waitUntil(lambda: 3 <= len(filled()) < whole and widget._runner.busy, timeout=30_000)
    assert "of about" in widget.status.value and "slices" in widget.status.value  # progress in slices, planned total
    assert widget.cancel.text == "Cancel segmentation" and "segmented so far stay" in widget.cancel.tooltip
    assert PAINTED in filled()
    assert widget.cancel.enabled
    support.paint((3, 20, 20), 1, refresh=True)  # painting works during the run...
    _go_to(viewer, 5)  # ...and so does scrolling
    widget.cancel.native.click()
    qtbot.waitUntil(lambda: not widget._runner.busy, timeout=5_000)
    timer.stop()
    assert len(ticks) >= 3  # the GUI thread kept handling events while the worker encoded
    assert "Cancelled" in widget.status.value and "segmented so far" in widget.status.value
    assert not widget.cancel.enabled
    kept = filled()  # what was shown stays, the painted slice as painted
    assert PAINTED in kept and len(kept) < image.data.shape[0]
    np.testing.assert_array_equal(prediction.data[PAINTED] == 1, truth[PAINTED] == 1)  # the first structure
    assert support.data[3, 20, 20] == 1
    # what the run showed is the widget's own: the next run takes no correction from it
    notification_manager.records.clear()
    widget.encoder.value = "tiny"
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert not any("were added to the support" in m for m in _messages())


def test_a_new_run_while_one_is_going_replaces_it_never_runs_beside_it(qtbot, session):
    viewer, widget, image, support, truth = session
    widget.encoder.value = "slow"
    started = []
    widget._runner.busy_changed.connect(started.append)
    widget.segmenting.volume_button.native.click()
    qtbot.waitUntil(lambda: widget._runner._bar is not None and widget._runner._bar.n >= 1, timeout=30_000)
    first = widget._runner.job
    widget.encoder.value = "tiny"
    widget.segmenting.volume_button.native.click()  # cancels the slow run, then starts
    assert widget._runner.job is first and "once the current run has stopped" in widget.status.value
    qtbot.waitUntil(lambda: not widget._runner.busy, timeout=60_000)
    assert started == [True, True, False]  # one run, then the next: never two at once
    assert viewer.layers["scan prediction"].metadata["napari_fewshot"]["encoder"] == "tiny"


def test_shortcuts_run_the_actions(qtbot, session):
    viewer, widget, image, support, truth = session
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_V, Qt.KeyboardModifier.AltModifier)
    qtbot.waitUntil(lambda: "scan prediction" in viewer.layers and not widget._runner.busy, timeout=60_000)
    assert "Alt-V" in widget.segmenting.volume_button.tooltip and "Alt-S" in widget.segmenting.slice_button.tooltip
    _go_to(viewer, 8)
    qtbot.keyClick(canvas, Qt.Key.Key_A, Qt.KeyboardModifier.AltModifier)
    assert support.data[8].any() and "Alt-A" in widget.correcting.add.tooltip


def test_export_writes_the_mask_with_the_source_geometry_and_a_sidecar(qtbot, session, scan, tmp_path):
    viewer, widget, image, support, truth = session
    assert widget.backend.value == "auto" and "(openvino " in widget.device_note.value
    widget.backend.value = "torch"  # the advanced choice reaches the engine and the record
    assert "(torch f32)" in widget.device_note.value
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert "on torch f32 on cpu" in widget.status.value
    prediction = viewer.layers["scan prediction"]
    out = tmp_path / "mask.nrrd"
    written = widget.exporting.export_mask(str(out))
    assert written == [str(out), str(tmp_path / "mask.json")]
    exported = read_volume(out)
    source = read_volume(scan[0]).geometry
    assert exported.geometry.same_grid(source)
    np.testing.assert_array_equal(to_view(exported.data, closest_canonical(source)), prediction.data)
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["labels"] == {"1": "bright", "2": "dark"}
    assert sidecar["segmentation"]["support_slices"] == {"1": [PAINTED], "2": [PAINTED]}
    assert sidecar["segmentation"]["encoder"] == "tiny" and sidecar["segmentation"]["head"] == "alpnet"
    assert sidecar["segmentation"]["backend"] == "torch" and sidecar["segmentation"]["runtime"].startswith("torch f32")
    assert sidecar["segmentation"]["earlier_runs"] == []  # the volume run replaced every slice
    assert Geometry.from_dict(sidecar["geometry"]).same_grid(source)

    # a slice preview after the volume run: the sidecar lists both runs, the preview first
    _go_to(viewer, 16)
    _run(qtbot, widget, widget.segmenting.slice_button)
    out = tmp_path / "new folder" / "mask.nii.gz"  # a folder that does not exist yet is made
    assert widget.exporting.export_mask(str(out))[0] == str(out)
    sidecar = json.loads((tmp_path / "new folder" / "mask.json").read_text())
    assert sidecar["segmentation"]["slices"] == [16]
    [volume_run] = sidecar["segmentation"]["earlier_runs"]
    assert volume_run["slices"] == "all" and volume_run["keep"] == "painted"
    assert any("Made the folder" in message for message in _messages())

    # over the scan itself: refused, nothing written, a notification says why
    scan_bytes = scan[0].read_bytes()
    assert widget.exporting.export_mask(str(scan[0])) == []
    assert scan[0].read_bytes() == scan_bytes
    assert any("would overwrite it" in message for message in _messages())


def test_bad_states_notify_and_leave_the_layers_intact(qtbot, session, tmp_path):
    viewer, widget, image, support, truth = session
    layers = list(viewer.layers)
    painted = np.array(support.data, copy=True)

    widget.names.value = "bright, 1: dark"
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert "label 1 is named twice" in _messages()[-1]
    widget.names.value = "bright, dark"

    other = viewer.add_labels(np.zeros((10, 48, 48), np.uint8), name="elsewhere")
    widget.support.value = other
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert "'elsewhere' (shape (10, 48, 48)" in _messages()[-1] and "not on the grid of 'scan'" in _messages()[-1]
    viewer.layers.remove(other)

    empty = widget.add_support_layer()
    widget.segmenting.volume_button.native.click()  # refused at once, before any work
    assert not widget._runner.busy and f"'{empty.name}' has no painted voxel: paint" in widget.status.value
    viewer.layers.remove(empty)
    widget.support.value = support

    noisy = viewer.add_image(np.where(truth > 0, np.nan, 1.0), name="broken", scale=image.scale, translate=image.translate)
    widget.image.value = noisy
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert "NaN or infinite voxels" in _messages()[-1]
    viewer.layers.remove(noisy)
    widget.image.value = image

    # the image closed during a run: the run stops, nothing is added
    widget.encoder.value = "slow"
    widget.segmenting.volume_button.native.click()
    qtbot.waitUntil(lambda: widget._runner._bar is not None and widget._runner._bar.n >= 1, timeout=30_000)
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: not widget._runner.busy, timeout=5_000)
    assert "'scan' was closed during the segmentation" in _messages()[-1]
    assert "scan prediction" not in viewer.layers
    assert [layer.name for layer in viewer.layers] == [layer.name for layer in layers if layer is not image]
    np.testing.assert_array_equal(support.data, painted)

    assert widget.image.value is None  # no image left to choose
    _run(qtbot, widget, widget.segmenting.volume_button)
    assert "Open a scan first" in _messages()[-1]


def test_the_canvas_shows_the_prediction(qtbot, session):
    viewer, widget, image, support, truth = session
    _run(qtbot, widget, widget.segmenting.volume_button)
    prediction = viewer.layers["scan prediction"]
    _go_to(viewer, PAINTED + 3)
    assert viewer.screenshot(canvas_only=True).any()  # scan and prediction on screen

    for layer in viewer.layers:
        layer.visible = layer is prediction
    prediction.opacity = 1.0
    shown = viewer.screenshot(canvas_only=True)[..., :3].astype(int)
    colour = np.round(np.asarray(prediction.get_color(1))[:3] * 255).astype(int)

    def pixel(index) -> np.ndarray:
        """The screenshot's colour where the voxel ``index`` (z, y, x) is drawn."""
        world = np.asarray(prediction.data_to_world(index))
        native = viewer.window._qt_viewer.canvas.native
        ratio = shown.shape[1] / native.width()
        row, col = (world[1:] - np.asarray(viewer.scene.camera.center)[1:]) * viewer.scene.camera.zoom + np.array(shown.shape[:2]) / ratio / 2
        return shown[int(round(row * ratio)), int(round(col * ratio))]

    z = PAINTED + 3
    inside = np.argwhere(truth[z] == 1).mean(axis=0).round().astype(int)
    assert prediction.data[z][tuple(inside)] == 1
    assert np.abs(pixel((z, *inside)) - colour).max() <= 2  # the structure, in its label colour
    assert not pixel((z, 2, 2)).any()  # background: nothing drawn


def test_the_encoders_load_in_a_viewer_drawn_by_mesa_llvm(tmp_path):
    """Under Xvfb, OpenGL runs on Mesa's LLVM; Triton's LLVM loaded after it crashed the process."""
    script = tmp_path / "viewer_then_encoder.py"
    script.write_text(
        "import time, napari, numpy\n"
        "from napari_fewshot._napari.widget import FewShotWidget\n"
        "viewer = napari.Viewer(show=True)  # OpenGL starts after the plugin was imported\n"
        "viewer.add_image(numpy.arange(8 * 16 * 16.0).reshape(8, 16, 16))\n"
        "support = viewer.add_labels(numpy.zeros((8, 16, 16), numpy.uint8))\n"
        "support.data[4, 4:9, 4:9] = 1\n"
        "_, widget = viewer.window.add_plugin_dock_widget('napari-fewshot', 'Few-shot segmentation')\n"
        "widget.encoder.value = 'tiny'\n"
        "widget.segmenting.run('volume')\n"
        "while widget._runner.busy:\n"
        "    napari.qt.get_qapp().processEvents(); time.sleep(0.01)\n"
        "assert 'Segmented the volume' in widget.status.value, widget.status.value\n"
        "import torchvision  # what the litemedsam and resnet101-coco encoders import\n"
        "print('loaded')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-2000:]


def test_refine_trains_on_the_labelled_slices_and_its_model_applies_again(qtbot, session, tmp_path, monkeypatch):
    viewer, widget, image, support, truth = session
    monkeypatch.setattr("napari_fewshot._napari.refine_part.REFINE_SIZE", 32)  # small slices and batches: a quick run
    monkeypatch.setattr("napari_fewshot._napari.refine_part.REFINE_BATCH", 2)
    support.events.paint(value=[])  # the end of a brush stroke
    assert not widget.refining.refine.enabled and "(1 of 8 slices)" in widget.refining.refine.text  # one painted slice
    support.paint((3, 20, 20), 1, refresh=True)
    assert "(2 of 8 slices)" in widget.refining.refine.text
    support.undo()  # the count follows the data: napari's undo sends no paint event
    assert "(1 of 8 slices)" in widget.refining.refine.text
    slices = list(range(5, 21, 2))  # 8 slices
    for z in slices:
        support.data_setitem(np.nonzero(_slice_mask(truth, z)), truth[_slice_mask(truth, z)])
    support.events.paint(value=[])
    assert widget.refining.refine.enabled and widget.refining.refine.text == "Refine with my annotations"
    widget.refining.steps.value = 4
    widget.refining.folder.value = str(tmp_path / "model")
    painted = np.array(support.data, copy=True)
    _run(qtbot, widget, widget.refining.refine, timeout=300_000)
    refined = viewer.layers["scan refined"]
    assert refined._type_string == "labels" and refined.data.shape == image.data.shape
    np.testing.assert_allclose(refined.scale, image.scale)
    assert refined.metadata["geometry"] == image.metadata["geometry"]
    record = refined.metadata["napari_fewshot"]
    model = Path(record["model"])  # a folder of its own inside the chosen one
    assert record["labelled_slices"] == 9 and model.parent.parent == tmp_path / "model" and model.is_file()
    assert model.with_suffix(".json").is_file() and str(widget.refining.folder.value) == str(model.parent)
    assert "refined" in widget.status.value
    assert set(np.unique(refined.data)) <= {0, 1, 2}

    refined.data[...] = 0
    _run(qtbot, widget, widget.refining.apply, timeout=300_000)  # the kept model, applied again to the chosen image
    assert viewer.layers["scan refined"] is refined and "Applying the refined model" in widget.status.value
    np.testing.assert_array_equal(support.data, painted)  # the support is never written to

    _run(qtbot, widget, widget.refining.refine, timeout=300_000)  # again: a new folder beside the first, which stays
    second = Path(viewer.layers["scan refined"].metadata["napari_fewshot"]["model"])
    assert second.parent != model.parent and second.parent.parent == tmp_path / "model" and model.is_file()


def _ahead(widget) -> callable:
    """Encode the scan ahead with the counting encoder on torch (its sleeps stay in the trunk); returns a
    function giving the slices encoded since."""
    CountingEncoder.most = 0
    before = DEFAULT_CACHE.stats.encoded_slices
    widget.backend.value, widget.encoder.value = "torch", "counting"
    widget.encode_ahead.value = True
    return lambda: DEFAULT_CACHE.stats.encoded_slices - before


def test_the_model_is_prepared_in_another_process_before_encoding_ahead(qtbot, session, monkeypatch, tmp_path, caplog):
    viewer, widget, image, support, truth = session
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    runtime = resolve_runtime("openvino", device="cpu")
    assert not is_prepared("tiny", runtime)
    before = DEFAULT_CACHE.stats.encoded_slices
    widget.backend.value = "openvino"
    widget.encode_ahead.value = True
    assert widget.device_note.value.startswith("Preparing the model for this CPU, once (converting tiny to OpenVINO")
    assert widget._runner.job is None  # encoding ahead waits for it
    qtbot.waitUntil(lambda: not widget._preparer.busy, timeout=60_000)
    qtbot.waitUntil(lambda: not widget._runner.busy and "ready" in widget.device_note.value, timeout=30_000)
    assert is_prepared("tiny", runtime) and DEFAULT_CACHE.stats.encoded_slices - before == 24
    assert "converting" not in caplog.text  # converted by the other process, never by this one
    assert measured_rate(prepare_key("tiny", runtime)) > 0  # the next preparing line says about how long


def test_encoding_ahead_yields_to_a_segment_run_and_then_finishes(qtbot, session):
    viewer, widget, image, support, truth = session
    encoded = _ahead(widget)
    assert widget._runner.job is not None and widget._runner.job.context["ahead"]
    qtbot.waitUntil(lambda: encoded() >= 4, timeout=30_000)
    widget.segmenting.run("volume")  # goes first: the ahead job stops within a batch
    qtbot.waitUntil(lambda: widget.status.value.startswith("Segmented "), timeout=60_000)
    segmented = widget.status.value
    encoded_by_the_run = int(segmented.split("encoding ")[1].split(" slices")[0])
    assert 0 < encoded_by_the_run < 24  # some slices were ready
    qtbot.waitUntil(lambda: not widget._runner.busy and "ready" in widget.device_note.value, timeout=60_000)
    assert encoded() == 24  # every slice encoded once, by one job or the other
    assert CountingEncoder.most == 1  # never two encodings at once
    assert dice(viewer.layers["scan prediction"].data == 1, truth == 1) > 0.7


def test_encoding_ahead_stops_when_the_scan_is_closed(qtbot, session):
    viewer, widget, image, support, truth = session
    encoded = _ahead(widget)
    qtbot.waitUntil(lambda: encoded() >= 4, timeout=30_000)
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: not widget._runner.busy, timeout=10_000)
    stopped_at = encoded()
    qtbot.wait(500)
    assert encoded() == stopped_at < 24
    assert not widget._runner.busy
    assert not any("closed during" in str(n.message) for n in notification_manager.records)


def test_closing_the_viewer_while_encoding_ahead_stops_the_worker(qtbot, session):
    viewer, widget, image, support, truth = session
    encoded = _ahead(widget)
    qtbot.waitUntil(lambda: encoded() >= 4, timeout=30_000)
    assert widget.cancel.enabled and widget.cancel.text == "Stop encoding ahead" and "'scan' ahead" in widget.cancel.tooltip
    runner = widget._runner
    viewer.close()  # what a script ending does first
    qtbot.waitUntil(lambda: runner.closed, timeout=10_000)
    assert not runner._working.is_set()  # the worker thread returned: nothing left to signal deleted Qt objects
    stopped_at = encoded()
    qtbot.wait(300)
    assert encoded() == stopped_at < 24


def test_closing_the_widget_during_a_run_calls_nothing_back(qtbot, session):
    viewer, widget, image, support, truth = session
    encoded = _ahead(widget)
    qtbot.waitUntil(lambda: encoded() >= 4, timeout=30_000)
    runner = widget._runner
    bound = [key for key in viewer.keymap if str(key) in {"Alt+S", "Alt+V", "Alt+A"}]
    assert len(bound) == len(widget_module.SHORTCUTS)
    viewer.window.remove_dock_widget(widget.native)
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: runner.closed and not runner.busy, timeout=10_000)
    qtbot.wait(300)  # the worker's last signals arrive: a deleted widget must not be touched (pytest-qt fails on it)
    assert encoded() < 24
    assert not any(key in viewer.keymap for key in bound)  # the keys are released


def test_export_to_dcm_writes_a_dicom_seg_of_the_series_and_refuses_other_scans(make_napari_viewer, tmp_path, monkeypatch):
    from conftest import ramp, write_dicom_series
    from napari_fewshot.io import write_volume
    from napari_fewshot.io.dicom_seg import read_seg

    monkeypatch.setattr(widget_module, "ENCODE_AHEAD", False)
    folder = write_dicom_series(tmp_path / "ct", ramp((6, 12, 14)), direction=DIRECTIONS["coronal"])
    scan = read_volume(folder)
    viewer = make_napari_viewer()
    [image] = viewer.open(folder, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.names.value = "liver, spleen"
    support = widget.add_support_layer()
    support.data_setitem((np.array([2, 2, 3]), np.array([4, 5, 5]), np.array([1, 1, 2])), np.array([1, 1, 2]))
    widget.exporting.layer.value = support
    out = tmp_path / "organs.dcm"
    assert widget.exporting.export_mask(str(out)) == [str(out), str(tmp_path / "organs.json")]
    assert "as DICOM SEG" in widget.status.value
    labels, names = read_seg(out, scan.geometry, scan.dicom)
    assert names == {1: "liver", 2: "spleen"}
    np.testing.assert_array_equal(to_view(labels.data, closest_canonical(scan.geometry)), support.data)

    # a scan read from a file: refused, naming the formats that work; nothing written
    nifti = write_volume(tmp_path / "scan.nii.gz", scan.data, scan.geometry)
    [other] = viewer.open(nifti, plugin=PLUGIN)
    widget.image.value = other
    widget.exporting.layer.value = widget.add_support_layer()
    notification_manager.records.clear()
    assert widget.exporting.export_mask(str(tmp_path / "other.dcm")) == []
    assert "only for a scan read from a DICOM series" in _messages()[-1] and ".nii.gz, .nii, .nrrd, .mha" in _messages()[-1]
    assert not (tmp_path / "other.dcm").exists() and not (tmp_path / "other.json").exists()


def test_buttons_work_when_enabled_errors_are_one_line_and_long_lines_keep_the_dock(qtbot, session, tmp_path):
    viewer, widget, image, support, truth = session
    assert not widget.cancel.enabled and widget.cancel.tooltip == "Nothing runs"
    assert not widget.refining.apply.enabled  # no model chosen
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / REFINED_FILE).write_bytes(b"")
    widget.refining.folder.value = tmp_path / "model"
    assert widget.refining.apply.enabled
    widget.refining.folder.value = tmp_path
    assert not widget.refining.apply.enabled  # a folder without a model

    # an error no check foresaw: one line with its type, never an empty first line
    widget.state.guarded(lambda: {}[""], "Export")()
    assert _messages()[-1] == "Export failed: KeyError: ''"

    dock, widest = widget.native.parentWidget(), widget.native.minimumSizeHint().width()  # what the dock must give
    width = dock.width()
    widget.say(f"Exported 'scan prediction' to /{'/'.join(['a-rather-long-folder-name'] * 12)}/mask.nii.gz.")
    widget.device_note.value = "x" * 400
    qtbot.wait(100)
    assert widget.native.minimumSizeHint().width() == widest and dock.width() == width

    # the sample's support names its structure
    viewer.open_sample(PLUGIN, "abdomen_ct")
    widget.support.value = viewer.layers["liver support"]
    assert widget.names.value == "1: liver"
