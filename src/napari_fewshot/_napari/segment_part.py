"""The widget's segmenting part: Segment slice and Segment volume, their progress, the prediction filling in."""

from __future__ import annotations

from dataclasses import asdict, replace
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, ProgressBar, PushButton
from magicgui.widgets.bases import ValueWidget
from napari.layers import Labels

from ..core.engine import Segmentation
from ..core.options import SegmentOptions, option_field, option_fields
from ..core.progress import ForwardProgress, Shown, duration
from .corrections import absent_slices
from .export import PROVENANCE, record_run
from .results import MAPS, find_layer, prediction_layer, prediction_name, show_segmentation, slice_index
from .runner import Job
from .state import WidgetState

#: The choice that leaves an option to the engine (its default for the run: the decoder where it can draw, the
#: components touching the painting for a volume).
AUTO = "auto"


def option_controls() -> dict[str, ValueWidget]:
    """A control per :class:`~napari_fewshot.core.options.SegmentOptions` field with a widget label, by name, from
    its declaration: a choice (with ``auto``, the engine's default) or a tick box (ticked for an option that is on
    where possible)."""
    controls: dict[str, ValueWidget] = {}
    for name, spec in option_fields():
        if not spec.label:
            continue
        tooltip = spec.tooltip or spec.help
        if spec.choices:
            control = ComboBox(label=spec.label, choices=[AUTO, *spec.choices], value=AUTO)
            tooltip += f". {AUTO}: the engine's default"
        else:
            control = CheckBox(text=spec.label, value=option_field(name).default is not False)
        control.tooltip = tooltip
        controls[name] = control
    return controls


def options_from_controls(controls: dict[str, ValueWidget]) -> SegmentOptions:
    """The options the ``controls`` of :func:`option_controls` say: ``auto`` and a ticked "where possible" box
    leave the option to the engine (None), an unticked one switches it off."""
    values = {}
    for name, control in controls.items():
        where_possible = option_field(name).default is None
        if isinstance(control, ComboBox):
            values[name] = None if control.value == AUTO else control.value
        else:
            values[name] = (None if control.value else False) if where_possible else control.value
    return SegmentOptions(**values)


class SegmentPart:
    """The Segment buttons (``slice_button``, ``volume_button``, their shortcuts shown on them), the ``progress``
    bar, and the settings of how the head's maps become labels (``options``: a control per option the widget
    shows, by name, :func:`option_controls`) and layers (``maps``).

    ``state``: the widget's shared state (the scan, the support and the model settings, the runner and the
    sessions, the hand corrections); a run shown is told to the other parts as ``state.segmented``.
    """

    def __init__(self, state: WidgetState, shortcuts: dict[str, str]) -> None:
        self.state = state
        self.options = option_controls()
        self.maps = ComboBox(label="Maps", choices=list(MAPS), value="attention")
        self.maps.tooltip = "Per structure, an Image layer (hidden; additive) with the prototype attention or the probability"
        self.slice_button = PushButton(text=f"Segment slice ({shortcuts['segment slice']})")
        self.slice_button.tooltip = f"Preview the slice on screen ({shortcuts['segment slice']})"
        self.volume_button = PushButton(text=f"Segment volume ({shortcuts['segment volume']})")
        self.volume_button.tooltip = f"Segment every slice in the background ({shortcuts['segment volume']})"
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.progress.tooltip = "Slices of the running segmentation done, of those planned"
        self.slice_button.changed.connect(state.guarded(lambda: self.run("slice"), "Segment slice"))
        self.volume_button.changed.connect(state.guarded(lambda: self.run("volume"), "Segment volume"))
        self.settings = (*self.options.values(), self.maps)

    def run(self, kind: str) -> None:
        """Segment the slice on screen (``kind="slice"``) or the volume (``"volume"``) in the background."""
        state = self.state
        checked = state.checked()
        if checked is None:
            return
        image, support, names = checked
        axis, current = state.place(image)
        if kind == "volume":
            state.take_corrections(image, support, axis)
        prediction = state.prediction(image)
        painting = np.array(support.data, copy=True)  # painting goes on during the run
        absent = absent_slices(state.corrections.absent.get(prediction, set()), axis, painting)
        n = image.data.shape[axis]
        slices = np.arange(n) if kind == "volume" else np.array([current])
        segment_options = options_from_controls(self.options)
        if kind == "slice":  # one slice: the components are those of that slice
            segment_options = replace(segment_options, keep=None)
        model = state.settings(image)
        options = dict(model)  # with the options the run resolved, what the export's sidecar records
        kwargs = dict(
            model,
            options=segment_options,
            image=np.asarray(image.data),
            support_labels=painting,
            absent=absent,
            spacing=tuple(float(s) for s in image.scale),
            modality=image.metadata.get("modality"),
            slices=None if kind == "volume" else slices,
        )
        state.segment_starting.emit()
        context = dict(image=image, support=support, previewed=set(), kind="segment")
        what = f"{image.name}: {'every slice' if kind == 'volume' else f'slice {current}'}"
        seconds = state.expect(image, len(slices))
        expected = "" if seconds is None else f" (about {duration(seconds)}, measured here)"
        job = Job(
            description=f"Segmenting {what}",
            function=partial(state.sessions.segment, image),
            kwargs=kwargs,
            started=lambda: state.say(f"Segmenting {what}...{expected}"),
            done=lambda result: self._show(result, context, slices, names, options, support.name),
            failed=state.failed,
            cancelled=lambda: self._cancelled(what, context),
            context=context,
            preview=(lambda value, done, mask: self._show_preview(context, value, done, mask, axis))
            if kind == "volume" else None,
            # the bar moves forward only, in slices of the scan, timed from here (a wait for another run included)
            forward=ForwardProgress(n, estimate=kind == "volume", expected_seconds=seconds),
        )
        self.progress.max, self.progress.value, self.progress.visible = 0, 0, True  # busy until slices are done
        state.runner.start(job)
        if state.runner.job is not job:
            state.say(f"Segmenting {what} once the current run has stopped...")

    def show_progress(self, job: Job, shown: Shown) -> None:
        """``job``'s slices done of those planned, and the time left, on the bar and the status line (the bar
        busy until the first slices are done)."""
        self.state.say(f"{job.description}: {job.forward.text()}")
        self.progress.max, self.progress.value = (shown.total, shown.done) if shown.done else (0, 0)
        self.progress.visible = True

    def _show_preview(self, context: dict[str, Any], value: int, slices: np.ndarray, mask: np.ndarray,
                      axis: int) -> None:
        """Write structure ``value`` as predicted so far on ``slices`` into the prediction layer.

        The first preview of a run empties the layer (the run replaces all of it), and what
        is written counts as the widget's own, not as a correction.  A layer the run made is
        removed again if the scan is closed during the run.
        """
        viewer, corrections = self.state.viewer, self.state.corrections
        image = context["image"]
        if image not in viewer.layers:
            return
        before = find_layer(viewer, prediction_name(image), Labels, image.data.shape)
        prediction = prediction_layer(viewer, image, context["support"].data.dtype)
        if prediction is not before:
            context["made"] = prediction
        previewed = context["previewed"]
        if not previewed or prediction not in corrections.written:  # the run's first batch, or a layer made anew
            prediction.data[...] = 0
            corrections.written[prediction] = np.zeros_like(prediction.data)
        where = slice_index(slices, axis, image.data.shape)
        for data in (prediction.data, corrections.written[prediction]):
            part = data[where]
            part[part == value] = 0
            part[mask] = value
            data[where] = part
        previewed.update(int(z) for z in slices)
        prediction.refresh()

    def _cancelled(self, what: str, context: dict[str, Any]) -> None:
        shown = len(context["previewed"])
        if shown:
            self.state.say(f"Cancelled ({what}); the prediction shows the {shown} slices segmented so far, before the "
                          "3D clean-up and the boundaries.")
        else:
            self.state.say(f"Cancelled ({what}); the previous prediction is unchanged.")

    def _show(
        self,
        result: Segmentation,
        context: dict[str, Any],
        slices: np.ndarray,
        names: dict[int, str],
        options: dict[str, Any],
        support_name: str,
    ) -> None:
        state = self.state
        viewer, corrections, image = state.viewer, state.corrections, context["image"]
        if image not in viewer.layers:
            return  # closed during the run: the widget has said so
        axis = options["axis"]
        previous = find_layer(viewer, prediction_name(image), Labels, image.data.shape)
        provenance = {
            "image": image.metadata.get("geometry", {}).get("source") or image.name,
            "support_layer": support_name,
            "support_slices": {str(v): list(s) for v, s in result.support_slices.items()},
            "slices": "all" if len(slices) == image.data.shape[axis] else slices.tolist(),
            "absent_slices": {str(v): list(s) for v, s in result.absent_slices.items()},
            **options,
            **asdict(result.options),
            "weights": result.weights,
            "boundaries": {str(v): drawn_by for v, drawn_by in result.boundaries.items()},
            "device": result.device,
            "runtime": str(result.runtime),
            "seconds": round(result.seconds["total"], 2),
        }
        whole = len(slices) == image.data.shape[axis]
        earlier = previous.metadata.get(PROVENANCE) if previous is not None else None
        prediction = show_segmentation(
            viewer, image, result, slices=slices, axis=axis, names=names, maps=self.maps.value,
            provenance=record_run(earlier, provenance, replaces_all=whole),
        )
        corrections.written[prediction] = np.array(prediction.data, copy=True)
        state.labels_shown.emit(prediction)
        if context["support"] in viewer.layers:  # painting goes on where it was, not on the new layers
            viewer.layers.selection.active = context["support"]
        state.segmented.emit(result, image, prediction, axis, names, whole)
        seconds = result.seconds
        state.say(
            f"Segmented {'the volume' if whole else f'slice {slices[0]}'} in {seconds['total']:.1f} s "
            f"(encoding {result.encoded_slices} slices: {seconds['encode']:.1f} s; head and boundaries: "
            f"{seconds['head']:.1f} s) on {result.runtime}."
        )
