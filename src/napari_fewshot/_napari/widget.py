"""The plugin's dock widget: pick the scan, make a support layer to paint on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label, PushButton, create_widget

from .layers import support_layer_data

if TYPE_CHECKING:
    import napari


class FewShotWidget(Container):
    """Dock widget "Few-shot segmentation".

    - **Image**: the scan to segment (an Image layer).
    - **New support layer**: an empty Labels layer on the scan's grid (same
      transform, same file geometry), selected and ready to paint with label 1.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.new_support = PushButton(text="New support layer")
        self.new_support.tooltip = "Add an empty Labels layer on the image's grid to paint the structure on"
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.new_support.changed.connect(self.add_support_layer)
        self.extend([self.image, self.new_support, self.status])

    def add_support_layer(self) -> napari.layers.Labels | None:
        """Add an empty support Labels layer on the chosen image's grid and select it for painting."""
        image = self.image.value
        if image is None:
            self.status.value = "Open a scan first (File > Open, or File > Open Sample > napari-fewshot)."
            return None
        attributes = {"scale": image.scale, "translate": image.translate, "rotate": image.rotate, "metadata": image.metadata}
        data, kwargs, _ = support_layer_data(image.data.shape, attributes, f"{image.name} support")
        layer = self._viewer.add_labels(data, **kwargs)
        layer.selected_label = 1
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self.status.value = f"Paint the structure on '{layer.name}' (label 1; more labels for more structures)."
        return layer
