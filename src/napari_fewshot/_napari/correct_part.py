"""The widget's correcting part: the slices to check, adding a slice to the support, taking hand corrections.

It remembers what the widget wrote into each prediction layer (``written``) and
the slices the user cleared (``cleared``); the differences found before the
next run (:mod:`.corrections`) join the support, so no correction is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import PushButton, Select
from napari.layers import Labels
from napari.utils.notifications import show_info

from ..core.confidence import check_reason, slice_confidence, slices_to_check
from ..core.engine import Segmentation
from .corrections import corrected_slices
from .layers import grid_message, same_grid
from .results import find_layer, prediction_name, slice_index

if TYPE_CHECKING:
    import napari

    from .widget import FewShotWidget

#: How many slices the "Slices to check" list shows.
SLICES_TO_CHECK = 10


class CorrectPart:
    """The list "Slices to check" (``check``) and the button "Add slice to support" (``add``, with its ``shortcut``).

    ``host`` is the widget holding the part: it has the viewer, the scan and the
    support, the slice on screen, the refine count, and says what happened.
    """

    def __init__(self, host: FewShotWidget, shortcut: str) -> None:
        self.host = host
        #: per prediction layer, what the widget last wrote into it, to find hand corrections
        #: (layers compare equal through napari's plugin proxies; identity does not hold)
        self.written: dict[Any, np.ndarray] = {}
        #: per prediction layer, (axis, slice) the user cleared: the structure is absent there,
        #: which a label volume cannot say as a support, so later runs keep those slices empty
        self.cleared: dict[Any, set[tuple[int, int]]] = {}
        self._listed: list[tuple[str, int]] = []  # the last run's slices to check (kept when layers change)
        self.check = Select(label="Slices to check", choices=lambda _: self._listed)
        self.check.tooltip = (
            "Slices of the last run worth a look, and why: where each structure begins or ends (or runs off the scan), "
            "where it looks unlike the painting, then the least sure boundaries; click one to go there"
        )
        self.add = PushButton(text=f"Add slice to support ({shortcut})")
        self.add.tooltip = (
            f"Copy the prediction of the slice on screen, as corrected, into the support ({shortcut}; "
            "undo on the support layer with Ctrl-Z)"
        )
        self.add.changed.connect(self.add_slice_to_support)
        self.check.changed.connect(self._go_to)

    def list(self, result: Segmentation, axis: int, names: dict[int, str]) -> None:
        """List the slices of ``result`` (slices along ``axis``) worth a look, and why."""
        sure = slice_confidence(result.probabilities.values(), axis)
        labels = np.moveaxis(result.labels, axis, 0).reshape(result.labels.shape[axis], -1)
        predicted = {value: (labels == value).any(axis=1) for value in result.presence}
        painted = {z for slices in result.support_slices.values() for z in slices}
        listed = slices_to_check(sure, result.presence, predicted, painted, SLICES_TO_CHECK)
        self._listed = [(check_reason(item, names), item.slice) for item in listed]
        self.check.changed.disconnect(self._go_to)
        self.check.reset_choices()
        self.check.value = []
        self.check.changed.connect(self._go_to)

    def add_slice_to_support(self) -> None:
        """Copy the prediction of the slice on screen into the support layer (undoable there with Ctrl-Z)."""
        host = self.host
        image, support = host.image.value, host.support.value
        prediction = None if image is None else find_layer(host.viewer, prediction_name(image), Labels, image.data.shape)
        if prediction is None or support is None:
            return host.refuse("Segment first: there is no prediction to add to the support.")
        if not same_grid(image, support):
            return host.refuse(grid_message(image, support))
        axis, current = host.slice_axis(image), host.current_slice(image)
        if not np.take(prediction.data, current, axis=axis).any():
            self.cleared.setdefault(prediction, set()).add((axis, current))
            host.say(f"Slice {current} is empty: later runs keep it empty. Press Segment volume (features are cached).")
            return
        _copy_slices(prediction, support, [current], axis)
        host.refining.count()
        host.say(f"Slice {current} is now part of the support; press Segment volume (features are cached).")

    def take_corrections(self, image: napari.layers.Image, support: napari.layers.Labels, axis: int) -> None:
        """Slices of the prediction changed by hand since the last run join the support, so no correction is lost."""
        prediction = find_layer(self.host.viewer, prediction_name(image), Labels, image.data.shape)
        written = None if prediction is None else self.written.get(prediction)
        if written is None or written.shape != prediction.data.shape:
            return
        corrected, cleared = corrected_slices(np.asarray(prediction.data), written, axis)
        self.cleared.setdefault(prediction, set()).update((axis, z) for z in cleared)
        slices = _copy_slices(prediction, support, corrected, axis)
        self.host.refining.count()
        if slices or cleared:
            added = f"Slices {', '.join(map(str, slices))} corrected in '{prediction.name}' were added to the support. " if slices else ""
            empty = f"Slices {', '.join(map(str, cleared))}, cleared by hand, stay empty." if cleared else ""
            show_info((added + empty).strip())

    def forget(self, layer: Any) -> None:
        """``layer`` was closed: nothing about it is kept."""
        self.written.pop(layer, None)
        self.cleared.pop(layer, None)

    def _go_to(self, value: list[int]) -> None:
        host = self.host
        image = host.image.value
        if not value or image is None:
            return
        axis = host.slice_axis(image)
        point = list(image.world_to_data(host.viewer.dims.point))
        point[axis] = value[-1]
        world = image.data_to_world(point)
        host.viewer.dims.set_point(range(len(world)), world)


def _copy_slices(source: Any, target: Any, slices: list[int], axis: int) -> list[int]:
    """Copy ``slices`` (along ``axis``) of Labels layer ``source`` into ``target`` as one undoable edit.

    Returns the slices that changed ``target`` (those it already held are left out).
    """
    region = np.zeros(source.data.shape, dtype=bool)
    region[slice_index(slices, axis, source.data.shape)] = True
    where = np.nonzero(region & (source.data != target.data))
    if len(where[0]):
        target.data_setitem(where, np.asarray(source.data)[where])
    return np.unique(where[axis]).tolist()
