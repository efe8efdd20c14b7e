"""The plugin's dock widget: paint a support, segment, check the least sure slices, correct, refine, export.

Thin by design: the widget holds the scan, the support, the structure names,
the model settings and the encoding ahead, and lays out its parts, each with its
controls and actions: segmenting (:class:`SegmentPart`), checking and correcting
(:class:`CorrectPart`), refining (:class:`RefinePart`) and exporting
(:class:`ExportPart`).  The parts share one :class:`~.state.WidgetState` (the
viewer, the one :class:`SegmentationRunner`: a thread worker, one run at a time,
model work never on the GUI thread; the scan sessions; the hand corrections) and
tell each other what happened through its events, never calling each other.
What the parts decide without Qt lives in plain functions (:mod:`.corrections`,
:func:`~.export.record_run`).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, create_widget
from napari.layers import Labels
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QApplication, QSizePolicy

from ..core.device import available_devices
from ..core.encoders import ENCODERS
from ..core.engine import DEFAULT_ENCODER, Segmentation
from ..core.backends import BACKENDS, resolve_runtime
from ..core.heads import DEFAULT_HEAD, HEADS
from ..core.progress import Shown, duration
from ..core.rates import measured_rate, rate_key, remember_rate
from .correct_part import CorrectPart
from .export_part import ExportPart
from .layers import layer_attributes, support_layer_data
from .preparing import ModelPreparer
from .reader_preference import patterns_read_elsewhere, prefer_this_reader
from .refine_part import RefinePart
from .results import find_layer, prediction_name
from .runner import Job, SegmentationRunner
from .state import WidgetState
from .segment_part import SegmentPart
from .structures import format_names, layer_names, names_features, parse_names

if TYPE_CHECKING:
    import napari

#: Whether the widget starts with "Encode ahead" ticked.
ENCODE_AHEAD = True
#: Keyboard shortcuts on the viewer, by action.
SHORTCUTS = {"segment slice": "Alt-S", "segment volume": "Alt-V", "add to support": "Alt-A"}
#: A run that encoded at least this many slices times the encoder for the widget's estimate of a first run.
MEASURED_SLICES = 4
#: A re-run from cached features said to take "seconds" when its part besides encoding took at most this long.
SECONDS = 10.0


class FewShotWidget(Container):
    """Dock widget "Few-shot segmentation".

    Paint a structure on one slice of a support layer, press "Segment volume"
    (or "Segment slice" for a preview of the slice on screen), look at the
    slices listed as least sure, correct the prediction there and press "Add
    slice to support" (slices corrected by hand are added by the next run
    anyway), segment again from the cached features, and export.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.state = WidgetState(
            viewer, scan=lambda: (self.image.value, self.support.value), settings=self.model_options,
            place=lambda image: (self.slice_axis(image), self.current_slice(image)), names=self.structure_names,
            say=self.say, expect=self.expected_seconds,
        )
        self._runner = self.state.runner
        self._rest_seconds: float | None = None  # the last run's time besides encoding (a re-run's time)
        self._encoded: dict[tuple, int] = {}  # slices encoded per scan and encoding settings (ahead or by a run)
        self._ahead_mark: tuple[float, int] | None = None  # (time, slices) of the encoding ahead's first batch
        self._preparer = ModelPreparer(show=lambda line: setattr(self.device_note, "value", line), ended=self._prepared)

        self.use_reader = PushButton(text="Open scans with napari-fewshot", visible=bool(patterns_read_elsewhere()))
        self.use_reader.tooltip = (
            "Let napari open NIfTI, NRRD and MetaImage files and DICOM folders with this plugin from now on, without "
            "asking which plugin to use (kept in napari's preferences; change it under Preferences > Plugins)"
        )
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.image.tooltip = "The scan to segment (File > Open a NIfTI, NRRD or MetaImage file, or a DICOM folder)"
        self.support = create_widget(label="Support", annotation="napari.layers.Labels")
        self.support.tooltip = "The Labels layer you paint on (value v = structure v); never overwritten by a prediction"
        self.new_support = PushButton(text="New support layer")
        self.new_support.tooltip = "Add an empty Labels layer on the image's grid to paint the structure on"
        self.names = LineEdit(label="Structure names")
        self.names.tooltip = "Names of the painted label values, e.g. 'liver, spleen' (labels 1, 2) or '1: liver, 3: kidney'"
        self.encoder = ComboBox(label="Encoder", choices=list(ENCODERS), value=DEFAULT_ENCODER)
        self.encoder.tooltip = "The network that turns each slice into features (litemedsam: the default and fastest)"
        self.head = ComboBox(label="Head", choices=list(HEADS), value=DEFAULT_HEAD)
        self.head.tooltip = "How the painted slices' prototypes are matched to every other slice (alpnet: the default)"
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.device.tooltip = "Where the model runs: auto (a GPU when there is one), cpu, cuda or mps"
        self.backend = ComboBox(label="Backend", choices=["auto", *BACKENDS], value="auto")
        self.backend.tooltip = (
            "What runs the encoder and decoder: auto (OpenVINO on the CPU, converted once per model and kept in "
            "your cache folder; torch on a GPU), torch, or openvino"
        )
        self.encode_ahead = CheckBox(text="Encode ahead", value=ENCODE_AHEAD)
        self.encode_ahead.tooltip = (
            "Encode the chosen scan in the background, from the slice on screen outward, while you paint, so that "
            "Segment finds the features ready; a segment run always goes first"
        )
        self._ahead_done: tuple | None = None  # the scan and settings encoded ahead (or stopped by the user)
        self.device_note = Label(value="")
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.cancel.tooltip = "Nothing runs"
        self.status = Label(value="")
        self.segmenting = SegmentPart(self.state, SHORTCUTS)
        self.correcting = CorrectPart(self.state, SHORTCUTS["add to support"])
        self.refining = RefinePart(self.state)
        self.exporting = ExportPart(self.state)
        self.state.segment_starting.connect(self._yield_ahead)
        self.state.segmented.connect(self._segmented)
        for widget in (self.device_note, self.status):  # a long line (a path) wraps or is cut, never widens the dock
            widget.native.setWordWrap(True)
            widget.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            widget.native.setMinimumWidth(1)
        # the expert knobs, folded away under one button
        self.advanced = Container(labels=True, visible=False, widgets=[
            self.encoder, self.head, self.device, self.backend, self.encode_ahead, *self.segmenting.settings,
            self.refining.steps, self.refining.folder,
        ])  # fmt: skip
        self.show_advanced = PushButton(text="Advanced settings ▸")
        self.show_advanced.tooltip = "Encoder, head, device and backend; post-processing; maps; refine settings"
        self.extend([
            self.use_reader, self.image, self.support, self.new_support, self.names, self.show_advanced, self.advanced,
            self.device_note, self.segmenting.slice_button, self.segmenting.volume_button, self.cancel,
            self.segmenting.progress, self.status,
            self.correcting.check, self.correcting.add, self.refining.refine, self.refining.apply, *self.exporting.widgets,
        ])  # fmt: skip

        self.use_reader.changed.connect(self.state.guarded(self.prefer_reader))
        self.show_advanced.changed.connect(self._toggle_advanced)
        self.new_support.changed.connect(self.state.guarded(self.add_support_layer))
        self.cancel.changed.connect(self.state.guarded(self.cancel_run))
        self.support.changed.connect(lambda: self.refining.watch(self.support.value))
        self.names.changed.connect(self._name_layers)
        self.support.changed.connect(self._show_support_names)
        for widget in (self.image, self.support, self.exporting.layer, self.refining.folder):
            widget.changed.connect(self._update_actions)
        self.image.changed.connect(self._clear_stale_status)
        for widget in (self.image, self.encoder, self.device, self.backend):
            widget.changed.connect(self._update_device_note)
            widget.changed.connect(self._encode_ahead)
        self.encode_ahead.changed.connect(self._encode_ahead)
        self._runner.progressed.connect(self._measure_ahead)
        self._runner.shown.connect(self._show_progress)
        self._runner.busy_changed.connect(self._busy)
        self.native.destroyed.connect(self._close)  # the widget closed, or the viewer with it
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._close)  # a script ending: no worker outlives the Qt objects it signals
        viewer.layers.events.removed.connect(self._layer_removed)
        self.refining.watch(self.support.value)
        for action, key in SHORTCUTS.items():
            viewer.bind_key(key, self._shortcut(action), overwrite=True)
        self._update_device_note()
        self._update_actions()
        self._show_support_names()
        self._encode_ahead()

    @property
    def viewer(self) -> napari.viewer.Viewer:
        return self._viewer

    @property
    def runner(self) -> SegmentationRunner:
        """The one runner of the widget's engine jobs (segment, encode ahead, refine, apply)."""
        return self._runner

    # -- actions ---------------------------------------------------------------------
    def prefer_reader(self) -> None:
        """Make this plugin napari's reader for scans (napari's preferences), so File > Open asks no more."""
        patterns = prefer_this_reader()
        self.use_reader.visible = False
        self.say(f"File > Open now reads {', '.join(patterns) or 'scans'} with napari-fewshot without asking "
                  "(napari's Preferences > Plugins > File extension readers to change it).")

    def add_support_layer(self) -> napari.layers.Labels | None:
        """Add an empty support Labels layer on the chosen image's grid and select it for painting."""
        image = self.image.value
        if image is None:
            return self.refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        data, kwargs, _ = support_layer_data(image.data.shape, layer_attributes(image), f"{image.name} support")
        layer = self._viewer.add_labels(data, **kwargs)
        layer.selected_label = 1
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self.support.value = layer
        self._name_layers()
        self.say(f"Paint the structure on '{layer.name}' (label 1; more labels for more structures).")
        return layer

    def cancel_run(self) -> None:
        """Stop the running segmentation (and drop one waiting to start); the slices it showed stay."""
        if self._is_ahead(self._runner.job):
            self._ahead_done = self._runner.job.context["ahead"]  # stopped by the user: not again for this scan
        if self._runner.busy:
            self._runner.cancel_all()
            self.say("Cancelling...")

    def encoding_options(self, image: napari.layers.Image) -> dict[str, Any]:
        """What decides the features of ``image``: the encoder, where it runs, the slice axis."""
        return dict(encoder=self.encoder.value, device=self.device.value, backend=self.backend.value,
                    axis=self.slice_axis(image))

    def model_options(self, image: napari.layers.Image) -> dict[str, Any]:
        """The model a run on ``image`` uses: :meth:`encoding_options` and the head."""
        return dict(self.encoding_options(image), head=self.head.value)

    def _yield_ahead(self) -> None:
        """A segment run is starting: encoding ahead yields to it and goes on after it (its line goes)."""
        if self._is_ahead(self._runner.job):
            self._ahead_done = None
        self._update_device_note()

    def _segmented(self, result: Segmentation, image: Any, prediction: Any, axis: int, names: dict[int, str],
                   whole: bool) -> None:
        """A run was shown: one that encoded enough slices on the CPU times the encoder for the first-run estimate
        (a slice or two would time the model's loading); after a volume the note says its features are ready."""
        encoded, seconds = result.encoded_slices, result.seconds
        if encoded >= MEASURED_SLICES:
            remember_rate(rate_key(result.encoder, result.runtime), seconds["encode"] / encoded)
        self._rest_seconds = max(seconds["total"] - seconds["encode"], 0.0)
        self._update_device_note()
        if whole:
            self._encoded[self._encoding_key(image)] = image.data.shape[axis]
            self.device_note.value = f"Features of '{image.name}' ready where this run went: segmenting again {self._takes()}."

    def _takes(self) -> str:
        """How long segmenting takes with the features ready: the last run's time besides encoding."""
        rest = self._rest_seconds
        if rest is None:
            return "skips the encoding"
        return "takes seconds" if rest <= SECONDS else f"takes about {duration(rest)}"

    def _encoding_key(self, image: napari.layers.Image) -> tuple:
        """What decides ``image``'s features: the scan and :meth:`encoding_options`."""
        return (id(image), *self.encoding_options(image).values())

    def _rate(self) -> float | None:
        """The seconds per slice measured on this machine for the chosen encoder and runtime (None: not yet)."""
        try:
            runtime = resolve_runtime(self.backend.value, device=self.device.value)
        except Exception:  # a device named but gone: the device note says so
            return None
        return measured_rate(rate_key(self.encoder.value, runtime))

    def expected_seconds(self, image: napari.layers.Image, slices: int) -> float | None:
        """A run's seconds on ``image`` for ``slices`` slices, measured here: the slices not yet encoded at this
        machine's rate, and the last run's time besides encoding (None: no rate measured yet)."""
        rate = self._rate()
        n = image.data.shape[self.slice_axis(image)]
        missing = max(min(slices, n - self._encoded.get(self._encoding_key(image), 0)), 0)
        if missing and rate is None:
            return None
        return missing * (rate or 0.0) + (self._rest_seconds or 0.0) * slices / max(n, 1)

    def _encode_ahead(self) -> None:
        """Encode the chosen scan in the background, from the slice on screen outward, when no run is going.

        A running ahead job for other settings (or with the box unticked) is stopped;
        it starts again when the runner is free (:meth:`_busy`).  A segment run asked
        for meanwhile cancels it and goes first (the runner runs one job at a time).
        """
        job = self._runner.job
        image = self.image.value
        wanted = None
        if self.encode_ahead.value and image is not None and image.ndim == 3 and not image.rgb:
            options = self.encoding_options(image)
            wanted = (id(image), *options.values())
        if self._is_ahead(job):
            if job.context["ahead"] != wanted:
                self._runner.cancel()
                self._update_device_note()
            return
        if job is not None or wanted is None or wanted == self._ahead_done or self._prepare_first():
            return
        n, current = image.data.shape[options["axis"]], self.current_slice(image)
        order = sorted(range(n), key=lambda z: (abs(z - current), z))  # the slice on screen first, then outward
        kwargs = dict(self.model_options(image), image=np.asarray(image.data),  # the session Segment will use
                      spacing=tuple(float(s) for s in image.scale), modality=image.metadata.get("modality"),
                      slices=order)

        def done(_) -> None:
            self._ahead_done = wanted
            self._encoded[wanted] = n
            self._update_device_note()
            self.device_note.value = f"Features of '{image.name}' ready: segmenting {self._takes()}."

        def failed(error: Exception) -> None:
            self._ahead_done = wanted  # not tried again until the scan or the settings change
            self.say(f"Encoding ahead stopped: {error}")

        self._ahead_mark = None
        self._runner.start(Job(
            description=f"Encoding '{image.name}' ahead", kwargs=kwargs,
            function=partial(self.state.sessions.encode, image),
            started=lambda: None, done=done, failed=failed, cancelled=lambda: None,
            context=dict(image=image, support=None, ahead=wanted),
        ))

    def _prepare_first(self) -> bool:
        """Whether encoding ahead waits for the chosen encoder to be prepared for OpenVINO in a process of its own
        (:class:`~.preparing.ModelPreparer`; a segment run meanwhile converts in its own worker, as before)."""
        try:
            runtime = resolve_runtime(self.backend.value, device=self.device.value)
        except Exception:  # a device named but gone: the device note says so
            return False
        return self._preparer.waits(self.encoder.value, runtime)

    def _prepared(self, problem: str | None) -> None:
        """The preparing process ended: encoding ahead starts; a failure is said in one line and runs go on."""
        self._update_device_note()
        if problem is not None:
            self.say(problem)
        self._encode_ahead()

    @staticmethod
    def _is_ahead(job: Job | None) -> bool:
        return job is not None and job.context.get("ahead") is not None

    def _measure_ahead(self, done: int, total: int, seconds_left: float | None) -> None:
        """Time the encoding ahead from its first batch on (the first holds the model's loading): this machine's
        rate for the first-run estimate; and count its slices encoded."""
        job = self._runner.job
        if not self._is_ahead(job) or done <= 0:
            return
        self._encoded[job.context["ahead"]] = done
        now = time.perf_counter()
        if self._ahead_mark is None:
            self._ahead_mark = (now, done)
        elif done - self._ahead_mark[1] >= MEASURED_SLICES:
            encoder, runtime = job.kwargs["encoder"], resolve_runtime(job.kwargs["backend"], device=job.kwargs["device"])
            remember_rate(rate_key(encoder, runtime), (now - self._ahead_mark[0]) / (done - self._ahead_mark[1]))

    def _show_progress(self, shown: Shown) -> None:
        """The running job's slices done of those planned, and the time left, beside the buttons."""
        job = self._runner.job
        if job is None or self._runner.closed:
            return
        if self._is_ahead(job):
            if not self._runner.stopping:  # a stopped encoding ahead leaves no line behind
                self.device_note.value = f"{job.description}: {job.forward.text()}."
        elif job.context.get("kind") == "segment":
            self.segmenting.show_progress(job, shown)

    # -- helpers ---------------------------------------------------------------------
    def structure_names(self) -> dict[int, str] | None:
        try:
            return parse_names(self.names.value)
        except ValueError as error:
            return self.refuse(f"Structure names: {error}")

    def slice_axis(self, image: napari.layers.Image) -> int:
        """The axis the viewer slices along (the one not displayed in 2D; the first in 3D)."""
        hidden = self._viewer.dims.not_displayed
        return hidden[-1] - (self._viewer.dims.ndim - image.ndim) if len(hidden) and self._viewer.dims.ndisplay == 2 else 0

    def current_slice(self, image: napari.layers.Image) -> int:
        """The index (along :meth:`slice_axis`) of the slice on screen."""
        axis = self.slice_axis(image)
        index = image.world_to_data(self._viewer.dims.point)[axis]
        return int(np.clip(round(index), 0, image.data.shape[axis] - 1))

    def _layer_removed(self, event: Any) -> None:
        self.state.corrections.forget(event.value)
        self.state.sessions.forget(event.value)
        job = self._runner.job
        if job is not None and any(event.value == job.context[k] for k in ("image", "support")):
            self._runner.cancel_all()
            if not self._is_ahead(job):
                show_warning(f"'{event.value.name}' was closed during the segmentation; the run was cancelled.")
            made = job.context.get("made")
            if event.value == job.context["image"] and made is not None and made in self._viewer.layers:
                self._viewer.layers.remove(made)  # the run's partial prediction of a scan no longer open

    def _name_layers(self) -> None:
        try:
            names = parse_names(self.names.value)
        except ValueError as error:
            self.say(f"Structure names: {error}")
            return
        image = self.image.value
        layers = [self.support.value]
        if image is not None:
            layers.append(find_layer(self._viewer, prediction_name(image), Labels, image.data.shape))
        for layer in filter(None, layers):
            layer.features = names_features(names)

    def _show_support_names(self) -> None:
        support = self.support.value
        names = {} if support is None else layer_names(support.features)
        if names:
            self.names.value = format_names(names)

    def _update_device_note(self) -> None:
        image, encoder = self.image.value, self.encoder.value
        try:
            runtime = resolve_runtime(self.backend.value, device=self.device.value)
        except Exception as error:  # a device named but gone, a backend it lacks: say so, do not break the widget
            self.device_note.value = str(error)
            return
        if runtime.device.type != "cpu":
            self.device_note.value = f"Running on {runtime.device}."
            return
        rate = measured_rate(rate_key(encoder, runtime))
        if image is None or image.ndim != 3 or rate is None:
            estimate = ("the first run on a scan encodes every slice once (its time is shown once a few slices are "
                        "encoded here)")
        else:
            n = image.data.shape[self.slice_axis(image)]
            estimate = (f"first run on '{image.name}': about {duration(self.expected_seconds(image, n) or 0.0)} "
                        f"({n} slices x {rate:.2g} s, measured here)")
        self.device_note.value = (f"Running on the CPU ({runtime.backend} {runtime.precision}); {estimate}. "
                                  "Re-runs reuse the features.")

    def _close(self, *_: Any) -> None:
        """The widget (or its viewer, or the application) is going away: the running job stops (waited for, so no
        worker thread outlives the Qt objects it signals), nothing is called back, its keys are the viewer's again."""
        if self._runner.closed:
            return
        self._preparer.stop()
        self._runner.close()
        for key in SHORTCUTS.values():
            self._viewer.bind_key(key, None)

    def _busy(self, busy: bool) -> None:
        """A job started or all ended: Cancel says what it stops, or is disabled."""
        job = self._runner.job
        self.cancel.enabled = busy
        if self._is_ahead(job):
            self.cancel.text = "Stop encoding ahead"
            self.cancel.tooltip = (f"Stop encoding '{job.context['image'].name}' ahead (not again for this scan and "
                                   "these settings); a segment run encodes what it lacks")
        elif job is not None and job.context.get("kind") == "segment":
            self.cancel.text = "Cancel segmentation"
            self.cancel.tooltip = f"Stop {job.description[0].lower()}{job.description[1:]}; the slices segmented so far stay in the prediction"
        elif job is not None:
            self.cancel.text, self.cancel.tooltip = "Cancel", f"Stop: {job.description}"
        else:
            self.cancel.text, self.cancel.tooltip = "Cancel", "Nothing runs"
        if not busy:
            self.segmenting.progress.visible = False
            self._encode_ahead()

    def _toggle_advanced(self) -> None:
        self.advanced.visible = not self.advanced.visible
        self.show_advanced.text = f"Advanced settings {'▾' if self.advanced.visible else '▸'}"

    def _update_actions(self, *_: Any) -> None:
        """Enable only what can work: segmenting needs a scan and a support, a support a scan, export a layer."""
        image, support = self.image.value, self.support.value
        for button in (self.segmenting.slice_button, self.segmenting.volume_button, self.correcting.add):
            button.enabled = image is not None and support is not None
        self.new_support.enabled = image is not None
        self.exporting.button.enabled = self.exporting.layer.value is not None
        self.refining.apply.enabled = image is not None and self.refining.has_model()

    def _clear_stale_status(self, *_: Any) -> None:
        """A new scan chosen: a line about the previous one (or about there being none) no longer holds."""
        if not self._runner.busy:
            self.say("")

    def _shortcut(self, action: str):
        actions = {
            "segment slice": lambda: self.segmenting.run("slice"),
            "segment volume": lambda: self.segmenting.run("volume"),
            "add to support": self.correcting.add_slice_to_support,
        }
        guarded = self.state.guarded(actions[action], action.capitalize())

        def press(viewer: napari.viewer.Viewer) -> None:
            guarded()

        press.__doc__ = f"napari-fewshot: {action}"
        return press

    def say(self, message: str) -> None:
        self.status.value = message

    def refuse(self, message: str, error: bool = False) -> None:
        """Tell the user why nothing happened (status line and a napari notification); returns None."""
        self.state.refuse(message, error)
