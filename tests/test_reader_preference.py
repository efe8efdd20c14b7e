"""Scans open with this plugin's reader, without a dialog, once napari's reader preference is set."""

import pytest
from napari.errors import MultipleReaderError
from napari.settings import get_settings

from conftest import ramp, write_dicom_series, write_itk
from napari_fewshot._napari.reader_preference import PLUGIN, patterns_read_elsewhere, prefer_this_reader

PATTERNS = {"*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.mhd", "*/"}


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    """A viewer, and napari's reader preferences holding another plugin's choice for one pattern (restored after)."""
    viewer = make_napari_viewer()
    monkeypatch.setattr(get_settings().plugins, "extension2reader", {"*.tif": "other-plugin"})
    return viewer


def test_scans_open_without_a_dialog_once_preferred(viewer, tmp_path):
    nifti = write_itk(tmp_path / "scan.nii.gz", ramp((6, 8, 9)), spacing=(1.0, 1.0, 2.0))
    folder = write_dicom_series(tmp_path / "series", ramp((6, 8, 9)))
    assert PATTERNS <= set(patterns_read_elsewhere())
    with pytest.raises(MultipleReaderError):  # File > Open would ask which plugin
        viewer.open(nifti, plugin=None)
    assert PATTERNS <= set(prefer_this_reader())
    assert patterns_read_elsewhere() == [] and prefer_this_reader() == []  # once is enough
    assert get_settings().plugins.extension2reader["*.tif"] == "other-plugin"  # other choices stay
    viewer.window._qt_viewer._qt_open([str(nifti)], stack=False)  # File > Open: a dialog would block here
    viewer.window._qt_viewer._qt_open([str(folder)], stack=False)  # File > Open Folder
    [series] = viewer.open(folder, plugin=None)  # a script that leaves the choice to the preferences
    for layer in (*viewer.layers[:2], series):
        assert layer.source.reader_plugin == PLUGIN and layer.data.shape == (6, 8, 9)
        assert "geometry" in layer.metadata  # read with the scan's geometry


def test_the_widget_offers_the_preference_until_it_is_set(viewer):
    from napari_fewshot._napari.widget import FewShotWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Few-shot segmentation")
    assert not widget.use_reader.native.isHidden()
    widget.use_reader.native.click()
    assert widget.use_reader.native.isHidden() and patterns_read_elsewhere() == []
    assert "without asking" in widget.status.value
    again = FewShotWidget(viewer)
    viewer.window.add_dock_widget(again, name="again")
    assert again.use_reader.native.isHidden()  # not offered again
