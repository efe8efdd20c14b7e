"""The widget's export part: a Labels layer to a file on its scan's grid, with its sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import FileEdit, PushButton, create_widget
from napari.utils.notifications import show_info

from ..io import VolumeWriteError
from ..io.formats import is_seg_path
from .export import export_labels
from .layers import layer_attributes
from .state import WidgetState
from .structures import layer_names


class ExportPart:
    """Which Labels layer to export (``layer``: the last one a run showed, or any other), to which file
    (``path``), and the ``button``; ``state``: the widget's shared state."""

    def __init__(self, state: WidgetState) -> None:
        self.state = state
        self.layer = create_widget(label="Export", annotation="napari.layers.Labels")
        self.layer.tooltip = "The Labels layer to export: the prediction after a run, or any other (a support, refined)"
        self.path = FileEdit(label="To file", mode="w", filter="*.nii.gz *.nii *.nrrd *.mha *.dcm")
        self.path.tooltip = "The file to write; a folder that does not exist yet is made"
        self.button = PushButton(text="Export mask")
        self.button.tooltip = (
            "Write the layer on the scan's grid (NIfTI, NRRD, MHA; or .dcm: a DICOM SEG of the DICOM series the scan "
            "was read from, one segment per structure) with a JSON sidecar of names and model"
        )
        self.button.changed.connect(state.guarded(self.export_mask, "Export"))
        self.widgets = (self.layer, self.path, self.button)
        state.labels_shown.connect(self._shown)

    def _shown(self, layer: Any) -> None:
        self.layer.reset_choices()
        self.layer.value = layer

    def export_mask(self, path: str | None = None) -> list[str]:
        """Write the chosen Labels layer (default: the prediction) to ``path`` (default: the file field); returns
        the files written (the mask and its sidecar), none when refused."""
        layer, state = self.layer.value, self.state
        target = str(path or self.path.value or "")
        if layer is None:
            return state.refuse("Nothing to export: segment first, or choose a Labels layer.") or []
        if not target or target == ".":
            return state.refuse("Choose a file to export to (.nii.gz, .nii, .nrrd, .mha, or .dcm for DICOM SEG).") or []
        names = layer_names(layer.features) or state.names() or {}
        folder = Path(target).parent
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as error:
                return state.refuse(f"Could not make the folder {folder} to export into: {error}", error=True) or []
            show_info(f"Made the folder {folder} to export into.")
        try:
            written = export_labels(target, layer.data, layer_attributes(layer), names)
        except VolumeWriteError as error:
            return state.refuse(str(error), error=True) or []
        what = " as DICOM SEG" if is_seg_path(written[0]) else ""
        state.say(f"Exported '{layer.name}' to {written[0]}{what} (sidecar {written[1].name}).")
        return [str(p) for p in written]
