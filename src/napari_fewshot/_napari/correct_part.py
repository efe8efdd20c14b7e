"""The widget's correcting part: the slices to check after a run, and adding the slice on screen to the support.

The hand corrections themselves are kept in the widget's state
(:class:`~.state.Corrections`) and join the support before the next run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import PushButton, Select

from ..core.confidence import check_reason
from ..core.engine import Segmentation
from .layers import grid_message, same_grid
from .state import WidgetState, copy_slices

#: How many slices the "Slices to check" list shows.
SLICES_TO_CHECK = 10


class CorrectPart:
    """The list "Slices to check" (``check``, filled after each run of the volume) and the button "Add slice to
    support" (``add``, with its ``shortcut``); ``state``: the widget's shared state."""

    def __init__(self, state: WidgetState, shortcut: str) -> None:
        self.state = state
        # the last run's slices to check, as (reason, (slice, structure)) (kept when layers change)
        self._listed: list[tuple[str, tuple[int, int | None]]] = []
        self.check = Select(label="Slices to check", choices=lambda _: self._listed)
        self.check.tooltip = (
            "Slices of the last run worth a look, and why: where each structure begins or ends (or runs off the scan), "
            "where it looks unlike the painting, then the least sure boundaries. Click one to go there with its "
            "structure's label chosen on the support layer: paint it if it is there, or erase the prediction "
            "there if it is not"
        )
        self.add = PushButton(text=f"Add slice to support ({shortcut})")
        self.add.tooltip = (
            f"Copy the prediction of the slice on screen, as corrected, into the support ({shortcut}; "
            "undo on the support layer with Ctrl-Z)"
        )
        self.add.changed.connect(state.guarded(self.add_slice_to_support, "Add slice to support"))
        self.check.changed.connect(self._go_to)
        state.segmented.connect(self._segmented)

    def _segmented(self, result: Segmentation, image: Any, prediction: Any, axis: int, names: dict[int, str],
                   whole: bool) -> None:
        if whole:
            self.list(result, axis, names)

    def list(self, result: Segmentation, axis: int, names: dict[int, str]) -> None:
        """List the slices of ``result`` (slices along ``axis``) worth a look, and why."""
        listed = result.slices_to_check(SLICES_TO_CHECK)
        self._listed = [(("next: " if i == 0 else "") + check_reason(item, names), (item.slice, item.structure))
                        for i, item in enumerate(listed)]
        self.check.changed.disconnect(self._go_to)
        self.check.reset_choices()
        self.check.value = []
        items = self.check.native
        for row in range(items.count()):  # a reason longer than the list is wide is read whole on hover
            items.item(row).setToolTip(items.item(row).text())
        self.check.changed.connect(self._go_to)

    def add_slice_to_support(self) -> None:
        """Copy the prediction of the slice on screen into the support layer (undoable there with Ctrl-Z)."""
        state = self.state
        image, support = state.scan()
        prediction = None if image is None else state.prediction(image)
        if prediction is None or support is None:
            return state.refuse("Segment first: there is no prediction to add to the support.")
        if not same_grid(image, support):
            return state.refuse(grid_message(image, support))
        axis, current = state.place(image)
        if not np.take(prediction.data, current, axis=axis).any():  # every structure painted is absent here
            values = [int(v) for v in np.unique(support.data) if v != 0]
            state.corrections.absent.setdefault(prediction, set()).update((axis, current, v) for v in values)
            names = state.names() or {}
            called = ", ".join(names.get(v, f"structure {v}") for v in values)
            state.say(f"Slice {current} is empty: {called} marked absent there, so later runs predict nothing of "
                      "them there or past there. Press Segment volume (features are cached).")
            return
        copy_slices(prediction, support, [current], axis)
        state.support_edited.emit()
        state.say(f"Slice {current} is now part of the support; press Segment volume (features are cached).")

    def _go_to(self, value: list[tuple[int, int | None]]) -> None:
        """Go to the slice chosen, its structure's label chosen on the support layer."""
        state = self.state
        image, support = state.scan()
        if not value or image is None:
            return
        where, structure = value[-1]
        axis = state.place(image)[0]
        point = list(image.world_to_data(state.viewer.dims.point))
        point[axis] = where
        world = image.data_to_world(point)
        state.viewer.dims.set_point(range(len(world)), world)
        if support is not None and structure is not None:
            support.selected_label = structure
