"""The plugin in a real napari viewer (under Xvfb): open, overlay, paint, save."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DIRECTIONS, ramp, write_itk
from napari_fewshot.io import Geometry, VolumeReadError, VolumeWriteError, read_volume
from napari_fewshot.io.orientation import closest_canonical, to_view, view_geometry

PLUGIN = "napari-fewshot"
WIDGET = "Few-shot segmentation"


def box_volume(geometry: Geometry, low_mm, high_mm, inside, outside, dtype) -> np.ndarray:
    """A volume on ``geometry`` whose voxels with physical (x, y, z) inside the box get ``inside``."""
    index = np.argwhere(np.ones(geometry.shape, bool))
    points = geometry.index_to_physical(index)
    hit = np.all((points >= low_mm) & (points <= high_mm), axis=1).reshape(geometry.shape)
    return np.where(hit, inside, outside).astype(dtype)


def test_manifest_validates():
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent))
    result = subprocess.run([npe2, "validate", PLUGIN], capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_image_and_label_map_of_different_grids_overlay(make_napari_viewer, tmp_path):
    low, high = np.array([-20.0, 10.0, 40.0]), np.array([14.0, 40.0, 70.0])
    scan_grid = Geometry((0.8, 0.8, 2.0), (30.0, 60.0, 20.0), tuple(DIRECTIONS["ras-flip"].ravel()), (90, 80, 40), "int16")
    mask_grid = Geometry((1.6, 1.5, 4.0), (-40.0, -5.0, 22.0), tuple(np.eye(3).ravel()), (50, 40, 20), "uint8")
    scan = box_volume(scan_grid, low, high, 1000, -1000, np.int16)
    mask = box_volume(mask_grid, low, high, 1, 0, np.uint8)
    ct_path = write_itk(tmp_path / "ct.nii.gz", scan, scan_grid.spacing, scan_grid.origin, scan_grid.direction_matrix)
    seg_path = write_itk(tmp_path / "organ_seg.nrrd", mask, mask_grid.spacing, mask_grid.origin, np.eye(3))

    viewer = make_napari_viewer()
    [image] = viewer.open(ct_path, plugin=PLUGIN)
    [labels] = viewer.open(seg_path, plugin=PLUGIN)
    assert image._type_string == "image" and labels._type_string == "labels"
    assert tuple(image.contrast_limits) == (-160.0, 240.0)  # CT soft-tissue window
    assert image.metadata["modality"] == "CT"
    assert Geometry.from_dict(image.metadata["geometry"]).same_grid(read_volume(ct_path).geometry)
    assert Geometry.from_dict(labels.metadata["geometry"]).same_grid(read_volume(seg_path).geometry)

    # World coordinates are physical (z, y, x) millimetres for both layers.
    view_index = np.array([3, 7, 11])
    scan_file = read_volume(ct_path).geometry  # as stored: NIfTI keeps float32
    scan_view = view_geometry(scan_file, closest_canonical(scan_file))  # the RAS-stored scan, shown in LPS
    for layer, grid in ((image, scan_view), (labels, mask_grid)):
        world = np.asarray(layer.data_to_world(view_index))
        np.testing.assert_allclose(world[::-1], grid.index_to_physical(view_index), atol=1e-9)

    # Every voxel of the mask, looked up in the scan at the same world point, is inside the organ.
    inside = np.argwhere(labels.data == 1)
    assert len(inside) > 50
    for index in inside[:: max(1, len(inside) // 200)]:
        scan_index = np.round(image.world_to_data(labels.data_to_world(index))).astype(int)
        if np.all(scan_index >= 0) and np.all(scan_index < image.data.shape):
            # a scan voxel nearer than half a mask voxel to the box wall may fall outside it
            point = mask_grid.index_to_physical(index)
            if np.all(point - low > 1.0) and np.all(high - point > 1.0):
                assert image.data[tuple(scan_index)] == 1000


def test_coronal_scan_is_shown_axially_and_saved_in_its_own_layout(make_napari_viewer, tmp_path):
    labels = np.zeros((6, 9, 11), np.uint8)
    labels[1:4, 2:5, 3:9] = 2
    labels[5, 8, 10] = 7
    path = write_itk(tmp_path / "coronal_seg.mha", labels, direction=DIRECTIONS["coronal"])
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(path, plugin=PLUGIN)
    assert layer.data.shape == (9, 6, 11)  # the file's y axis runs along physical z: now first
    assert np.allclose(layer.rotate, np.eye(3))  # no axis swap is left to napari
    assert viewer.screenshot(canvas_only=True).any()

    out = tmp_path / "saved.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    saved = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), labels)
    original = sitk.ReadImage(str(path))
    np.testing.assert_allclose(saved.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(saved.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(saved.GetSpacing(), original.GetSpacing(), rtol=1e-6)


def test_labels_layer_made_in_napari_saves_with_its_transform(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((4, 5, 6), np.int32)
    data[2, 1:3, 2:5] = 300
    layer = viewer.add_labels(data, scale=(2.5, 0.5, 0.75), translate=(10.0, -4.0, 7.5))
    out = tmp_path / "drawn.nrrd"
    layer.save(str(out), plugin=PLUGIN)
    volume = read_volume(out)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.data.dtype == np.uint16  # the smallest type that holds 300
    assert volume.geometry.spacing == (0.75, 0.5, 2.5)
    assert volume.geometry.origin == (7.5, -4.0, 10.0)


@pytest.mark.filterwarnings("ignore:projection mode:UserWarning")  # napari's own note on conversion
def test_label_map_with_a_plain_name_converts_to_labels_keeping_geometry(make_napari_viewer, tmp_path):
    from napari.layers._layer_actions import _convert_to_labels  # the layer list's "Convert to Labels"

    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1, 1] = 4
    path = write_itk(tmp_path / "study.nii.gz", labels, direction=DIRECTIONS["ras-flip"])
    viewer = make_napari_viewer()
    [image] = viewer.open(path, plugin=PLUGIN)
    assert image._type_string == "image"
    viewer.layers.selection = {image}
    _convert_to_labels(viewer.layers)
    [layer] = viewer.layers
    assert layer._type_string == "labels"
    out = tmp_path / "study_copy.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), labels)
    assert read_volume(out).geometry.same_grid(read_volume(path).geometry)


def test_writer_errors_reach_the_user(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    flat = viewer.add_labels(np.zeros((4, 5), np.uint8))
    with pytest.raises(VolumeWriteError, match=r"writes 3D volumes .* shape \(4, 5\)"):
        flat.save(str(tmp_path / "flat.nii.gz"), plugin=PLUGIN)
    volume = viewer.add_labels(np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(VolumeWriteError, match="does not exist"):
        volume.save(str(tmp_path / "missing" / "mask.nii.gz"), plugin=PLUGIN)


def test_bad_file_reports_the_problem_in_napari(make_napari_viewer, tmp_path):
    path = write_itk(tmp_path / "broken.nii.gz", ramp((20, 30, 40)))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])
    viewer = make_napari_viewer()
    with pytest.raises(VolumeReadError, match="truncated"):
        viewer.open(path, plugin=PLUGIN)
    assert len(viewer.layers) == 0
    from napari_fewshot._napari.reader import get_reader

    assert get_reader(str(tmp_path / "photo.png")) is None


def test_sample_data_widget_new_support_layer_and_export(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setattr("napari_fewshot._napari.widget.ENCODE_AHEAD", False)  # no encoding left running after the test
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "abdomen_ct")
    image, support = viewer.layers
    assert image._type_string == "image" and support._type_string == "labels"
    assert image.metadata["modality"] == "CT"
    assert image.data.shape == support.data.shape == (48, 101, 122)
    painted = np.flatnonzero(support.data.any(axis=(1, 2)))
    assert painted.tolist() == [42] and support.data.max() == 1

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget.image.value is image
    widget.new_support.clicked.emit()
    new = viewer.layers[-1]
    assert new._type_string == "labels" and new.name == "abdomen CT support"
    assert viewer.layers.selection.active is new and new.mode == "paint"
    np.testing.assert_allclose(new.scale, image.scale)
    np.testing.assert_allclose(new.translate, image.translate)
    assert new.metadata["geometry"]["spacing"] == image.metadata["geometry"]["spacing"]

    new.paint((20, 50, 60), 1, refresh=True)  # a brush stroke at slice 20
    assert new.data[20, 50, 60] == 1 and new.data[19].max() == 0
    out = tmp_path / "liver.nrrd"
    new.save(str(out), plugin=PLUGIN)
    exported = read_volume(out)
    scan_geometry = Geometry.from_dict(image.metadata["geometry"])
    assert exported.geometry.same_grid(scan_geometry)
    expected = to_view(exported.data, closest_canonical(scan_geometry))
    np.testing.assert_array_equal(expected, new.data)
    with pytest.raises(VolumeWriteError, match="would overwrite it"):
        new.save(scan_geometry.source, plugin=PLUGIN)


def test_widget_without_image_says_what_to_do(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert widget.add_support_layer() is None
    assert "Open a scan first" in widget.status.value
    assert len(viewer.layers) == 0
    # with nothing loaded only what can work is enabled; the expert knobs are folded away
    assert not any(b.enabled for b in (widget.new_support, widget.segmenting.slice_button, widget.segmenting.volume_button, widget.exporting.button))
    assert widget.advanced.native.isHidden()
    widget.show_advanced.native.click()
    assert not widget.advanced.native.isHidden() and widget.encoder in widget.advanced
    # a scan opened: the line about there being none goes, a support can be made, then segmenting
    viewer.add_image(ramp((6, 9, 11)).astype(np.float32), name="scan")
    assert widget.status.value == "" and widget.new_support.enabled and not widget.segmenting.volume_button.enabled
    widget.add_support_layer()
    assert widget.segmenting.volume_button.enabled and widget.segmenting.slice_button.enabled


def test_dicom_seg_saves_and_opens_on_its_series_grid(make_napari_viewer, tmp_path):
    from conftest import write_dicom_series
    from napari_fewshot._napari.layers import layer_attributes, support_layer_data
    from napari_fewshot._napari.reader import get_reader
    from napari_fewshot._napari.structures import layer_names, names_features

    study = tmp_path / "study"
    folder = write_dicom_series(study / "ct", ramp((6, 9, 11)), direction=DIRECTIONS["coronal"])  # shown transposed
    viewer = make_napari_viewer()
    [image] = viewer.open(folder, plugin=PLUGIN)
    assert image.metadata["dicom"]["series_uid"] == "1.2.826.0.1.3680043.2.1125.1.1"
    data, kwargs, _ = support_layer_data(image.data.shape, layer_attributes(image), "organs")
    organs = viewer.add_labels(data, **kwargs)
    organs.data[1:4, 2:5, 3] = 1
    organs.data[2, 5, 1:4] = 2
    organs.features = names_features({1: "liver", 2: "spleen"})
    path = study / "organs.dcm"
    organs.save(str(path), plugin=PLUGIN)

    [opened] = viewer.open(path, plugin=PLUGIN)  # on the open series
    assert opened._type_string == "labels" and layer_names(opened.features) == {1: "liver", 2: "spleen"}
    np.testing.assert_array_equal(opened.data, organs.data)
    for attribute in ("scale", "translate", "rotate"):
        np.testing.assert_allclose(getattr(opened, attribute), getattr(image, attribute))
    viewer.layers.clear()
    [alone] = viewer.open(path, plugin=PLUGIN)  # the series found beside the file
    np.testing.assert_array_equal(alone.data, organs.data)

    [series] = viewer.open(next(folder.iterdir()), plugin=PLUGIN)  # a slice opens its whole series
    assert series._type_string == "image" and series.data.shape == image.data.shape
    assert get_reader(str(tmp_path / "notes.dcm")) is None  # no such file
    drawn = viewer.add_labels(np.ones((2, 4, 5), np.uint8))
    with pytest.raises(VolumeWriteError, match=r"only for a scan read from a DICOM series.*\.nii\.gz"):
        drawn.save(str(tmp_path / "drawn.dcm"), plugin=PLUGIN)
    assert not (tmp_path / "drawn.dcm").exists()
