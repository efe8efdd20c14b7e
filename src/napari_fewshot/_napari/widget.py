"""The plugin's dock widget: paint a support, segment, check the least sure slices, correct, refine, export.

Thin by design: it gathers the layers and options, runs
:func:`napari_fewshot.segment` through :class:`SegmentationRunner` (a thread
worker, one run at a time), and turns results into layers with
:func:`show_segmentation`.  Model work never runs on the GUI thread.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, Select, SpinBox, create_widget,
)
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.boundaries import BOUNDARIES
from ..core.confidence import check_reason, slice_confidence, slices_to_check
from ..core.device import available_devices
from ..core.encoders import ENCODERS
from ..core.engine import DEFAULT_ENCODER, Segmentation, encode_volume, segment
from ..core.heads import DEFAULT_HEAD, HEADS
from ..core.options import SegmentOptions
from ..core.postprocess import KEEP
from ..core.refined import REFINED_FILE
from ..core.runtime import BACKENDS, resolve_runtime
from ..io import VolumeWriteError
from ..io.formats import is_seg_path
from .corrections import corrected_slices, kept_empty
from .export import PROVENANCE, export_labels, record_run
from .layers import layer_attributes, support_layer_data
from .reader_preference import patterns_read_elsewhere, prefer_this_reader
from .refining import MIN_LABELLED_SLICES, apply_job, labelled_slices, refine_job, show_refined
from .results import MAPS, find_layer, prediction_layer, prediction_name, show_segmentation, slice_index
from .runner import Job, SegmentationRunner
from .structures import format_names, layer_names, names_features, parse_names

if TYPE_CHECKING:
    import napari

#: Seconds to encode one slice on the CPU by encoder and backend, measured on the project's 2-core
#: machine (docs/benchmarks.md, issue 17: OpenVINO in bfloat16 0.14-0.44 s, eager torch 2.1-6.1 s,
#: with the load); replaced by the rate the last run measured here.
CPU_SECONDS_PER_SLICE = {("litemedsam", "openvino"): 0.3, ("litemedsam", "torch"): 2.2}
#: Whether the widget starts with "Encode ahead" ticked.
ENCODE_AHEAD = True
#: Keyboard shortcuts on the viewer, by action.
SHORTCUTS = {"segment slice": "Alt-S", "segment volume": "Alt-V", "add to support": "Alt-A"}
#: A run that encoded at least this many slices times the encoder for the widget's estimate of a first run.
MEASURED_SLICES = 4
#: How many slices the "Slices to check" list shows.
SLICES_TO_CHECK = 10
#: The Boundaries choice that leaves it to the engine (the decoder where it can draw).
AUTO = "auto"
#: The refine step's defaults in the widget: steps, slice size (px), labelled slices per step.
REFINE_STEPS, REFINE_SIZE, REFINE_BATCH = 600, 128, 8


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
        self._runner = SegmentationRunner()
        #: what the widget last wrote into each prediction layer, to find hand corrections
        #: (layers compare equal through napari's plugin proxies; identity does not hold)
        self._written: dict[Any, np.ndarray] = {}
        #: per prediction layer, (axis, slice) the user cleared: the structure is absent there,
        #: which a label volume cannot say as a support, so later runs keep those slices empty
        self._cleared: dict[Any, set[tuple[int, int]]] = {}
        self._seconds_per_slice = dict(CPU_SECONDS_PER_SLICE)

        self.use_reader = PushButton(text="Open scans with napari-fewshot", visible=bool(patterns_read_elsewhere()))
        self.use_reader.tooltip = (
            "Let napari open NIfTI, NRRD and MetaImage files and DICOM folders with this plugin from now on, without "
            "asking which plugin to use (kept in napari's preferences; change it under Preferences > Plugins)"
        )
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.support = create_widget(label="Support", annotation="napari.layers.Labels")
        self.support.tooltip = "The Labels layer you paint on (value v = structure v); never overwritten by a prediction"
        self.new_support = PushButton(text="New support layer")
        self.new_support.tooltip = "Add an empty Labels layer on the image's grid to paint the structure on"
        self.names = LineEdit(label="Structure names")
        self.names.tooltip = "Names of the painted label values, e.g. 'liver, spleen' (labels 1, 2) or '1: liver, 3: kidney'"
        self.encoder = ComboBox(label="Encoder", choices=list(ENCODERS), value=DEFAULT_ENCODER)
        self.head = ComboBox(label="Head", choices=list(HEADS), value=DEFAULT_HEAD)
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.backend = ComboBox(label="Backend", choices=list(BACKENDS), value="auto")
        self.backend.tooltip = (
            "What runs the encoder and decoder: auto (OpenVINO on the CPU, converted once per model and kept in "
            "your cache folder; torch on a GPU), torch, or openvino"
        )
        self.keep = ComboBox(label="Keep", choices=list(KEEP), value="painted")
        self.keep.tooltip = "Which 3D parts of each structure stay: those touching the painting, the largest, or all"
        self.boundaries = ComboBox(label="Boundaries", choices=[AUTO, *BOUNDARIES], value=AUTO)
        self.boundaries.tooltip = (
            "Who draws each slice's boundary: LiteMedSAM's decoder where the prototypes found the structure "
            "(sharper; about 0.15 s more per slice on a CPU; needs the litemedsam encoder), or the prototype head "
            f"(faster, coarser). {AUTO}: the decoder where it can"
        )
        self.fill_holes = CheckBox(text="Fill holes", value=False)
        self.encode_ahead = CheckBox(text="Encode ahead", value=ENCODE_AHEAD)
        self.encode_ahead.tooltip = (
            "Encode the chosen scan in the background, from the slice on screen outward, while you paint, so that "
            "Segment finds the features ready; a segment run always goes first"
        )
        self._ahead_done: tuple | None = None  # the scan and settings encoded ahead (or stopped by the user)
        self.every_slice = CheckBox(text="Every slice", value=False)
        self.every_slice.tooltip = (
            "Segment volume encodes and predicts every slice. Unticked (faster), each structure is followed from its "
            "painted slices outward until it ends, and 10 mm beyond; slices never reached stay empty"
        )
        self.maps = ComboBox(label="Maps", choices=list(MAPS), value="attention")
        self.maps.tooltip = "Per structure, an Image layer (hidden; additive) with the prototype attention or the probability"
        self.device_note = Label(value="")
        self.segment_slice = PushButton(text=f"Segment slice ({SHORTCUTS['segment slice']})")
        self.segment_slice.tooltip = f"Preview the slice on screen ({SHORTCUTS['segment slice']})"
        self.segment_volume = PushButton(text=f"Segment volume ({SHORTCUTS['segment volume']})")
        self.segment_volume.tooltip = f"Segment every slice in the background ({SHORTCUTS['segment volume']})"
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.cancel.tooltip = "Stop the run; the slices segmented so far stay in the prediction"
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.progress.tooltip = "Slices of the running segmentation done, of those planned"
        self.status = Label(value="")
        self._to_check: list[tuple[str, int]] = []  # the last run's slices to check (kept when layers change)
        self.check = Select(label="Slices to check", choices=lambda _: self._to_check)
        self.check.tooltip = (
            "Slices of the last run worth a look, and why: where each structure begins or ends (or runs off the scan), "
            "where it looks unlike the painting, then the least sure boundaries; click one to go there"
        )
        self.add_to_support = PushButton(text=f"Add slice to support ({SHORTCUTS['add to support']})")
        self.add_to_support.tooltip = (
            f"Copy the prediction of the slice on screen, as corrected, into the support ({SHORTCUTS['add to support']}; "
            "undo on the support layer with Ctrl-Z)"
        )
        self.refine_steps = SpinBox(label="Refine steps", min=1, max=100_000, value=REFINE_STEPS)
        self.refine_steps.tooltip = "Training steps of the refine run (docs/benchmarks.md: 600 steps take 25 s on a GPU)"
        self.model_folder = FileEdit(label="Model folder", mode="d")
        self.model_folder.tooltip = (
            "Where refined models are kept, each run in a new folder inside it (empty: a temporary folder); "
            "after a run it shows that run's folder, which 'Apply model' reads"
        )
        self.refine = PushButton(text="Refine with my annotations", enabled=False)
        self.refine.tooltip = (
            f"Train a network on the labelled slices of the support ({MIN_LABELLED_SLICES} or more) and the rest of "
            "the scan (PCCS), in the background; the result is the Labels layer '<image> refined'"
        )
        self.apply_model = PushButton(text="Apply model to image")
        self.apply_model.tooltip = "Segment the chosen image with the refined model in 'Model folder'"
        self.export_layer = create_widget(label="Export", annotation="napari.layers.Labels")
        self.export_path = FileEdit(label="To file", mode="w", filter="*.nii.gz *.nii *.nrrd *.mha *.dcm")
        self.export = PushButton(text="Export mask")
        self.export.tooltip = (
            "Write the layer on the scan's grid (NIfTI, NRRD, MHA; or .dcm: a DICOM SEG of the DICOM series the scan "
            "was read from, one segment per structure) with a JSON sidecar of names and model"
        )
        for widget in (self.device_note, self.status):
            widget.native.setWordWrap(True)
        # the expert knobs, folded away under one button
        self.advanced = Container(labels=True, visible=False, widgets=[
            self.encoder, self.head, self.device, self.backend, self.keep, self.boundaries, self.fill_holes,
            self.every_slice, self.encode_ahead, self.maps, self.refine_steps, self.model_folder,
        ])  # fmt: skip
        self.show_advanced = PushButton(text="Advanced settings ▸")
        self.show_advanced.tooltip = "Encoder, head, device and backend; post-processing; maps; refine settings"
        self.extend([
            self.use_reader, self.image, self.support, self.new_support, self.names, self.show_advanced, self.advanced,
            self.device_note, self.segment_slice, self.segment_volume, self.cancel, self.progress, self.status,
            self.check, self.add_to_support, self.refine, self.apply_model, self.export_layer, self.export_path,
            self.export,
        ])  # fmt: skip

        self.use_reader.changed.connect(self.prefer_reader)
        self.show_advanced.changed.connect(self._toggle_advanced)
        self.new_support.changed.connect(self.add_support_layer)
        self.segment_slice.changed.connect(lambda: self.run("slice"))
        self.segment_volume.changed.connect(lambda: self.run("volume"))
        self.cancel.changed.connect(self.cancel_run)
        self.add_to_support.changed.connect(self.add_slice_to_support)
        self.refine.changed.connect(self.refine_with_annotations)
        self.apply_model.changed.connect(self.apply_refined_model)
        self.support.changed.connect(self._watch_support)
        self._watched: Any = None
        self.export.changed.connect(lambda: self.export_mask())
        self.check.changed.connect(self._go_to_checked)
        self.names.changed.connect(self._name_layers)
        self.support.changed.connect(self._show_support_names)
        for widget in (self.image, self.support, self.export_layer):
            widget.changed.connect(self._update_actions)
        self.image.changed.connect(self._clear_stale_status)
        for widget in (self.image, self.encoder, self.device, self.backend):
            widget.changed.connect(self._update_device_note)
            widget.changed.connect(self._encode_ahead)
        self.encode_ahead.changed.connect(self._encode_ahead)
        self._runner.progressed.connect(self._show_progress)
        self._runner.busy_changed.connect(self._busy)
        self.native.destroyed.connect(lambda *_: self._runner.close())  # a run ending after the widget calls nothing back
        viewer.layers.events.removed.connect(self._layer_removed)
        self._watch_support()
        for action, key in SHORTCUTS.items():
            viewer.bind_key(key, self._shortcut(action), overwrite=True)
        self._update_device_note()
        self._update_actions()
        self._encode_ahead()

    # -- actions ---------------------------------------------------------------------
    def prefer_reader(self) -> None:
        """Make this plugin napari's reader for scans (napari's preferences), so File > Open asks no more."""
        patterns = prefer_this_reader()
        self.use_reader.visible = False
        self._say(f"File > Open now reads {', '.join(patterns) or 'scans'} with napari-fewshot without asking "
                  "(napari's Preferences > Plugins > File extension readers to change it).")

    def add_support_layer(self) -> napari.layers.Labels | None:
        """Add an empty support Labels layer on the chosen image's grid and select it for painting."""
        image = self.image.value
        if image is None:
            return self._refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        data, kwargs, _ = support_layer_data(image.data.shape, layer_attributes(image), f"{image.name} support")
        layer = self._viewer.add_labels(data, **kwargs)
        layer.selected_label = 1
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self.support.value = layer
        self._name_layers()
        self._say(f"Paint the structure on '{layer.name}' (label 1; more labels for more structures).")
        return layer

    def run(self, kind: str) -> None:
        """Segment the slice on screen (``kind="slice"``) or every slice (``"volume"``) in the background."""
        checked = self._checked_layers()
        if checked is None:
            return
        image, support, names = checked
        axis, current = self._slice_axis(image), self._current_slice(image)
        if kind == "volume":
            self._take_corrections(image, support, axis)
        n = image.data.shape[axis]
        slices = np.arange(n) if kind == "volume" else np.array([current])
        segment_options = SegmentOptions(
            keep=self.keep.value if kind == "volume" else "all",
            boundaries=None if self.boundaries.value == AUTO else self.boundaries.value,
            fill_holes=self.fill_holes.value,
            every_slice=self.every_slice.value,
        )
        model = dict(self._encoding_options(image), head=self.head.value)
        options = dict(model, **asdict(segment_options))  # what the export's sidecar records
        kwargs = dict(
            model,
            options=segment_options,
            image=np.asarray(image.data),
            support_labels=np.array(support.data, copy=True),  # painting goes on during the run
            spacing=tuple(float(s) for s in image.scale),
            modality=image.metadata.get("modality"),
            slices=None if kind == "volume" else slices,
        )
        if self._is_ahead(self._runner.job):
            self._ahead_done = None  # encoding ahead yields to this run and goes on after it
        context = dict(image=image, support=support, previewed=set())
        what = f"{image.name}: {'every slice' if kind == 'volume' else f'slice {current}'}"
        job = Job(
            description=f"Segmenting {what}",
            kwargs=kwargs,
            started=lambda: self._say(f"Segmenting {what}..."),
            done=lambda result: self._show(result, context, slices, names, options, support.name),
            failed=self._failed,
            cancelled=lambda: self._cancelled(what, context),
            context=context,
            preview=(lambda value, done, mask: self._show_preview(context, value, done, mask, axis))
            if kind == "volume" else None,
        )
        self._runner.start(job)
        if self._runner.job is not job:
            self._say(f"Segmenting {what} once the current run has stopped...")

    def cancel_run(self) -> None:
        """Stop the running segmentation (and drop one waiting to start); the slices it showed stay."""
        if self._is_ahead(self._runner.job):
            self._ahead_done = self._runner.job.context["ahead"]  # stopped by the user: not again for this scan
        if self._runner.busy:
            self._runner.cancel_all()
            self._say("Cancelling...")

    def _encoding_options(self, image: napari.layers.Image) -> dict[str, Any]:
        """What decides the features of ``image``: the encoder, where it runs, the slice axis."""
        return dict(encoder=self.encoder.value, device=self.device.value, backend=self.backend.value,
                    axis=self._slice_axis(image))

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
            options = self._encoding_options(image)
            wanted = (id(image), *options.values())
        if self._is_ahead(job):
            if job.context["ahead"] != wanted:
                self._runner.cancel()
            return
        if job is not None or wanted is None or wanted == self._ahead_done:
            return
        n, current = image.data.shape[options["axis"]], self._current_slice(image)
        order = sorted(range(n), key=lambda z: (abs(z - current), z))  # the slice on screen first, then outward
        kwargs = dict(options, image=np.asarray(image.data), spacing=tuple(float(s) for s in image.scale),
                      modality=image.metadata.get("modality"), slices=order)

        def done(_) -> None:
            self._ahead_done = wanted
            self.device_note.value = f"Features of '{image.name}' ready: segmenting takes seconds."

        def failed(error: Exception) -> None:
            self._ahead_done = wanted  # not tried again until the scan or the settings change
            self._say(f"Encoding ahead stopped: {error}")

        self._runner.start(Job(
            description=f"Encoding {image.name} ahead", kwargs=kwargs, function=encode_volume,
            started=lambda: None, done=done, failed=failed, cancelled=lambda: None,
            context=dict(image=image, support=None, ahead=wanted),
        ))

    @staticmethod
    def _is_ahead(job: Job | None) -> bool:
        return job is not None and job.context.get("ahead") is not None

    def _show_progress(self, done: int, total: int, seconds_left: float | None) -> None:
        """The running job's slices done of those planned, and the time left, beside the buttons."""
        job = self._runner.job
        if job is None or not total or self._runner.closed:
            return
        if self._is_ahead(job):
            self.device_note.value = f"Encoding '{job.context['image'].name}' ahead: {done} of {total} slices."
        elif job.function is segment:
            left = "" if seconds_left is None else f", about {_duration(seconds_left)} left"
            self._say(f"{job.description}: {done} of {'' if done >= total else '~'}{total} slices{left}")
            self.progress.max, self.progress.value = total, done
            self.progress.visible = True

    def _show_preview(self, context: dict[str, Any], value: int, slices: np.ndarray, mask: np.ndarray,
                      axis: int) -> None:
        """Write structure ``value`` as predicted so far on ``slices`` into the prediction layer.

        The first preview of a run empties the layer (the run replaces all of it);
        slices the user cleared by hand stay empty, and what is written counts as
        the widget's own, not as a correction.  A layer the run made is removed
        again if the scan is closed during the run.
        """
        image = context["image"]
        if image not in self._viewer.layers:
            return
        before = find_layer(self._viewer, prediction_name(image), Labels, image.data.shape)
        prediction = prediction_layer(self._viewer, image, context["support"].data.dtype)
        if prediction is not before:
            context["made"] = prediction
        previewed = context["previewed"]
        if not previewed or prediction not in self._written:  # the run's first batch, or a layer made anew
            prediction.data[...] = 0
            self._written[prediction] = np.zeros_like(prediction.data)
        cleared = {z for a, z in self._cleared.get(prediction, ()) if a == axis}
        shown = [i for i, z in enumerate(slices) if z not in cleared]
        where = slice_index([slices[i] for i in shown], axis, image.data.shape)
        mask = np.take(mask, shown, axis=axis)
        for data in (prediction.data, self._written[prediction]):
            part = data[where]
            part[part == value] = 0
            part[mask] = value
            data[where] = part
        previewed.update(int(slices[i]) for i in shown)
        prediction.refresh()

    def _cancelled(self, what: str, context: dict[str, Any]) -> None:
        shown = len(context["previewed"])
        if shown:
            self._say(f"Cancelled ({what}); the prediction shows the {shown} slices segmented so far, before the "
                      "3D clean-up and the boundaries.")
        else:
            self._say(f"Cancelled ({what}); the previous prediction is unchanged.")

    def add_slice_to_support(self) -> None:
        """Copy the prediction of the slice on screen into the support layer (undoable there with Ctrl-Z)."""
        image, support = self.image.value, self.support.value
        prediction = None if image is None else find_layer(self._viewer, prediction_name(image), Labels, image.data.shape)
        if prediction is None or support is None:
            return self._refuse("Segment first: there is no prediction to add to the support.")
        if not _same_grid(image, support):
            return self._refuse(_grid_message(image, support))
        axis, current = self._slice_axis(image), self._current_slice(image)
        if not np.take(prediction.data, current, axis=axis).any():
            self._cleared.setdefault(prediction, set()).add((axis, current))
            self._say(f"Slice {current} is empty: later runs keep it empty. Press Segment volume (features are cached).")
            return
        _copy_slices(prediction, support, [current], axis)
        self._update_refine()
        self._say(f"Slice {current} is now part of the support; press Segment volume (features are cached).")

    def refine_with_annotations(self) -> None:
        """Train a network on the support's labelled slices and the rest of the scan (PCCS) in the background."""
        checked = self._checked_layers()
        if checked is None:
            return
        image, support, names = checked
        axis = self._slice_axis(image)
        self._take_corrections(image, support, axis)
        labelled = labelled_slices(support.data, axis)
        if labelled < MIN_LABELLED_SLICES:
            return self._refuse(
                f"'{support.name}' has {labelled} labelled slices; paint or correct at least {MIN_LABELLED_SLICES} "
                "(Add slice to support) before refining."
            )
        # every run gets a folder of its own (inside the chosen one): no model kept there before is overwritten
        chosen = str(self.model_folder.value or "")
        base = Path(chosen) if chosen and chosen != "." else None
        if base is not None and (base / REFINED_FILE).is_file():
            base = base.parent  # the folder of an earlier run: its new sibling
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="refined-", dir=base))
        kwargs = dict(
            image=np.asarray(image.data), labels=np.array(support.data, copy=True), out=out,
            spacing=tuple(float(s) for s in image.scale), axis=axis, modality=image.metadata.get("modality"),
            steps=self.refine_steps.value, size=REFINE_SIZE, batch=REFINE_BATCH, device=self.device.value,
            describe=self._runner.described.emit,
        )
        provenance = dict(method="pccs", steps=self.refine_steps.value, size=REFINE_SIZE, support_layer=support.name,
                          labelled_slices=labelled, axis=axis)
        self._start_refined_job(image, names, f"Refining on {labelled} labelled slices of '{support.name}'",
                                refine_job, kwargs, provenance)

    def apply_refined_model(self) -> None:
        """Segment the chosen image with the refined model in the model folder, in the background."""
        image, folder = self.image.value, str(self.model_folder.value or "")
        if image is None:
            return self._refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        if not folder or folder == "." or not (Path(folder) / REFINED_FILE).is_file():
            return self._refuse("Choose a model folder holding a refined model (Refine with my annotations writes one).")
        axis = self._slice_axis(image)
        kwargs = dict(image=np.asarray(image.data), model=Path(folder) / REFINED_FILE, axis=axis,
                      spacing=tuple(float(s) for s in image.scale), modality=image.metadata.get("modality"),
                      device=self.device.value)
        self._start_refined_job(image, self._names() or {}, f"Applying the refined model to '{image.name}'",
                                apply_job, kwargs, dict(axis=axis))

    def export_mask(self, path: str | None = None) -> list[str]:
        """Write the chosen Labels layer (default: the prediction) to ``path`` (default: the file field)."""
        layer = self.export_layer.value
        target = str(path or self.export_path.value or "")
        if layer is None:
            return self._refuse("Nothing to export: segment first, or choose a Labels layer.") or []
        if not target or target == ".":
            return self._refuse("Choose a file to export to (.nii.gz, .nii, .nrrd, .mha, or .dcm for DICOM SEG).") or []
        names = layer_names(layer.features) or self._names() or {}
        folder = Path(target).parent
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as error:
                return self._refuse(f"Could not make the folder {folder} to export into: {error}", error=True) or []
            show_info(f"Made the folder {folder} to export into.")
        try:
            written = export_labels(target, layer.data, layer_attributes(layer), names)
        except VolumeWriteError as error:
            return self._refuse(str(error), error=True) or []
        what = " as DICOM SEG" if is_seg_path(written[0]) else ""
        self._say(f"Exported '{layer.name}' to {written[0]}{what} (sidecar {written[1].name}).")
        return [str(p) for p in written]

    # -- helpers ---------------------------------------------------------------------
    def _start_refined_job(self, image: Any, names: dict[int, str], what: str, function: Any, kwargs: dict[str, Any],
                           provenance: dict[str, Any]) -> None:
        """Run a refine or apply job; its labels go to '<image> refined' and its model to the model folder."""

        def done(outcome: tuple[np.ndarray, Path]) -> None:
            labels, model = outcome
            if image not in self._viewer.layers:
                return
            self.model_folder.value = str(model.parent)
            layer = show_refined(self._viewer, image, labels, names, {**provenance, "model": str(model)})
            self.export_layer.reset_choices()
            self._say(f"{what}: done. The result is '{layer.name}'; the model is in {model.parent}.")

        job = Job(
            description=what, kwargs=kwargs, function=function,
            started=lambda: self._say(f"{what}..."),
            done=done,
            failed=self._failed,
            cancelled=lambda: self._say(f"Cancelled ({what})."),
            context=dict(image=image, support=self.support.value),
        )
        self._runner.start(job)

    def _watch_support(self) -> None:
        """Follow the chosen support's edits, so that 'Refine' is enabled once enough slices are labelled."""
        events = ("paint", "labels_update", "data", "set_data")  # set_data: undo and redo write the data silently
        if self._watched is not None:
            for name in events:
                getattr(self._watched.events, name).disconnect(self._update_refine)
        self._watched = self.support.value
        if self._watched is not None:
            for name in events:
                getattr(self._watched.events, name).connect(self._update_refine)
        self._update_refine()

    def _update_refine(self, event: Any = None) -> None:
        support, image = self.support.value, self.image.value
        axis = self._slice_axis(image) if image is not None else 0
        count = 0 if support is None else labelled_slices(support.data, min(axis, support.data.ndim - 1))
        self.refine.enabled = count >= MIN_LABELLED_SLICES
        missing = f" ({count} of {MIN_LABELLED_SLICES} slices)" if count < MIN_LABELLED_SLICES else ""
        self.refine.text = f"Refine with my annotations{missing}"

    def _checked_layers(self) -> tuple[Any, Any, dict[int, str]] | None:
        image, support = self.image.value, self.support.value
        if image is None:
            return self._refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        if image.ndim != 3 or image.rgb:
            return self._refuse(f"'{image.name}' is not a 3D grey-value volume; choose a scan (z, y, x).")
        if support is None:
            return self._refuse("Make a support layer ('New support layer') and paint the structure on one slice.")
        if not _same_grid(image, support):
            return self._refuse(_grid_message(image, support))
        names = self._names()
        return None if names is None else (image, support, names)

    def _names(self) -> dict[int, str] | None:
        try:
            return parse_names(self.names.value)
        except ValueError as error:
            return self._refuse(f"Structure names: {error}")

    def _slice_axis(self, image: napari.layers.Image) -> int:
        """The axis the viewer slices along (the one not displayed in 2D; the first in 3D)."""
        hidden = self._viewer.dims.not_displayed
        return hidden[-1] - (self._viewer.dims.ndim - image.ndim) if len(hidden) and self._viewer.dims.ndisplay == 2 else 0

    def _current_slice(self, image: napari.layers.Image) -> int:
        axis = self._slice_axis(image)
        index = image.world_to_data(self._viewer.dims.point)[axis]
        return int(np.clip(round(index), 0, image.data.shape[axis] - 1))

    def _take_corrections(self, image: napari.layers.Image, support: napari.layers.Labels, axis: int) -> None:
        """Slices of the prediction changed by hand since the last run join the support, so no correction is lost."""
        prediction = find_layer(self._viewer, prediction_name(image), Labels, image.data.shape)
        written = None if prediction is None else self._written.get(prediction)
        if written is None or written.shape != prediction.data.shape:
            return
        corrected, cleared = corrected_slices(np.asarray(prediction.data), written, axis)
        self._cleared.setdefault(prediction, set()).update((axis, z) for z in cleared)
        slices = _copy_slices(prediction, support, corrected, axis)
        self._update_refine()
        if slices or cleared:
            added = f"Slices {', '.join(map(str, slices))} corrected in '{prediction.name}' were added to the support. " if slices else ""
            empty = f"Slices {', '.join(map(str, cleared))}, cleared by hand, stay empty." if cleared else ""
            show_info((added + empty).strip())

    def _show(
        self,
        result: Segmentation,
        context: dict[str, Any],
        slices: np.ndarray,
        names: dict[int, str],
        options: dict[str, Any],
        support_name: str,
    ) -> None:
        image = context["image"]
        if image not in self._viewer.layers:
            return  # closed during the run: _layer_removed has said so
        encoded = result.encoded_slices
        if encoded >= MEASURED_SLICES and result.device == "cpu":  # a slice or two would time the model's loading
            self._seconds_per_slice[result.encoder, result.runtime.backend] = result.seconds["encode"] / encoded
            self._update_device_note()
        axis = options["axis"]
        previous = find_layer(self._viewer, prediction_name(image), Labels, image.data.shape)
        painted = {z for slices in result.support_slices.values() for z in slices}
        empty = kept_empty(self._cleared.get(previous, set()), axis, painted)
        if empty:
            result.labels[slice_index(empty, axis, result.labels.shape)] = 0
        provenance = {
            "image": image.metadata.get("geometry", {}).get("source") or image.name,
            "support_layer": support_name,
            "support_slices": {str(v): list(s) for v, s in result.support_slices.items()},
            "slices": "all" if len(slices) == image.data.shape[axis] else slices.tolist(),
            "empty_slices": empty,
            **options,
            "weights": result.weights,
            "boundaries": {str(v): drawn_by for v, drawn_by in result.boundaries.items()},
            "device": result.device,
            "runtime": str(result.runtime),
            "seconds": round(result.seconds["total"], 2),
        }
        whole = len(slices) == image.data.shape[axis]
        earlier = previous.metadata.get(PROVENANCE) if previous is not None else None
        prediction = show_segmentation(
            self._viewer, image, result, slices=slices, axis=options["axis"], names=names, maps=self.maps.value,
            provenance=record_run(earlier, provenance, replaces_all=whole),
        )
        self._written[prediction] = np.array(prediction.data, copy=True)
        self.export_layer.reset_choices()
        self.export_layer.value = prediction
        if context["support"] in self._viewer.layers:  # painting goes on where it was, not on the new layers
            self._viewer.layers.selection.active = context["support"]
        if whole:
            self._list_slices_to_check(result, options["axis"], names)
            self.device_note.value = f"Features of '{image.name}' ready where this run went: segmenting again takes seconds."
        seconds = result.seconds
        self._say(
            f"Segmented {'the volume' if whole else f'slice {slices[0]}'} in {seconds['total']:.1f} s "
            f"(encoding {encoded} slices: {seconds['encode']:.1f} s; head and boundaries: {seconds['head']:.1f} s) "
            f"on {result.runtime}."
        )

    def _list_slices_to_check(self, result: Segmentation, axis: int, names: dict[int, str]) -> None:
        sure = slice_confidence(result.probabilities.values(), axis)
        labels = np.moveaxis(result.labels, axis, 0).reshape(result.labels.shape[axis], -1)
        predicted = {value: (labels == value).any(axis=1) for value in result.presence}
        painted = {z for slices in result.support_slices.values() for z in slices}
        listed = slices_to_check(sure, result.presence, predicted, painted, SLICES_TO_CHECK)
        self._to_check = [(check_reason(item, names), item.slice) for item in listed]
        self.check.changed.disconnect(self._go_to_checked)
        self.check.reset_choices()
        self.check.value = []
        self.check.changed.connect(self._go_to_checked)

    def _go_to_checked(self, value: list[int]) -> None:
        image = self.image.value
        if not value or image is None:
            return
        axis = self._slice_axis(image)
        point = list(image.world_to_data(self._viewer.dims.point))
        point[axis] = value[-1]
        world = image.data_to_world(point)
        self._viewer.dims.set_point(range(len(world)), world)

    def _failed(self, error: Exception) -> None:
        message = str(error) if error.__class__.__module__.startswith("napari_fewshot") else f"{type(error).__name__}: {error}"
        self._refuse(f"Segmentation failed: {message}", error=True)

    def _layer_removed(self, event: Any) -> None:
        self._written.pop(event.value, None)
        self._cleared.pop(event.value, None)
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
            self._say(f"Structure names: {error}")
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
        rate = self._seconds_per_slice.get((encoder, runtime.backend))
        if image is None or rate is None:
            estimate = "the first run on a scan encodes every slice once"
        else:
            n = image.data.shape[self._slice_axis(image)] if image.ndim == 3 else 0
            estimate = f"first run on '{image.name}': about {_duration(n * rate)} ({n} slices x {rate:.1f} s)"
        self.device_note.value = f"Running on the CPU ({runtime.backend}); {estimate}. Re-runs reuse the features: seconds."

    def _busy(self, busy: bool) -> None:
        self.cancel.enabled = busy
        if not busy:
            self.progress.visible = False
            self._encode_ahead()

    def _toggle_advanced(self) -> None:
        self.advanced.visible = not self.advanced.visible
        self.show_advanced.text = f"Advanced settings {'▾' if self.advanced.visible else '▸'}"

    def _update_actions(self, *_: Any) -> None:
        """Enable only what can work: segmenting needs a scan and a support, a support a scan, export a layer."""
        image, support = self.image.value, self.support.value
        for button in (self.segment_slice, self.segment_volume, self.add_to_support):
            button.enabled = image is not None and support is not None
        self.new_support.enabled = image is not None
        self.export.enabled = self.export_layer.value is not None

    def _clear_stale_status(self, *_: Any) -> None:
        """A new scan chosen: a line about the previous one (or about there being none) no longer holds."""
        if not self._runner.busy:
            self._say("")

    def _shortcut(self, action: str):
        actions = {
            "segment slice": lambda: self.run("slice"),
            "segment volume": lambda: self.run("volume"),
            "add to support": self.add_slice_to_support,
        }

        def press(viewer: napari.viewer.Viewer) -> None:
            actions[action]()

        press.__doc__ = f"napari-fewshot: {action}"
        return press

    def _say(self, message: str) -> None:
        self.status.value = message

    def _refuse(self, message: str, error: bool = False) -> None:
        """Tell the user why nothing happened (status line and a napari notification); returns None."""
        self._say(message)
        (show_error if error else show_warning)(message)


def _same_grid(image: Any, labels: Any) -> bool:
    return (
        image.data.shape == labels.data.shape
        and np.allclose(image.scale, labels.scale)
        and np.allclose(image.translate, labels.translate)
        and np.allclose(image.rotate, labels.rotate)
    )


def _grid_message(image: Any, labels: Any) -> str:
    return (
        f"'{labels.name}' (shape {labels.data.shape}, spacing {tuple(np.round(labels.scale, 3))}) is not on the grid of "
        f"'{image.name}' (shape {image.data.shape}, spacing {tuple(np.round(image.scale, 3))}); "
        "press 'New support layer' to paint on the image's grid."
    )


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


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
