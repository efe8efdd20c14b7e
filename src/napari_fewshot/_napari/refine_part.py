"""The widget's refine part: train a network on the labelled slices (PCCS), and apply a refined model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, PushButton, SpinBox

from ..core.refined import REFINED_FILE
from ..train.refine.trainer import RefineConfig
from .refining import MIN_LABELLED_SLICES, apply_job, labelled_slices, refine_job, show_refined
from .runner import Job
from .state import WidgetState

#: The widget's refine run: fewer steps on smaller slices (px) than the command line's, so a user waits less;
#: labelled slices per step as there.
REFINE_STEPS, REFINE_SIZE, REFINE_BATCH = 600, 128, RefineConfig.batch


class RefinePart:
    """The refine and apply buttons (``refine``, ``apply``) and their settings (``steps``, ``folder``).

    ``state``: the widget's shared state (the scan, the support, the runner; hand
    corrections join the support before a run).
    """

    def __init__(self, state: WidgetState) -> None:
        self.state = state
        self.steps = SpinBox(label="Refine steps", min=1, max=100_000, value=REFINE_STEPS)
        self.steps.tooltip = "Training steps of the refine run (600 steps take 25 s on a GPU)"
        self.folder = FileEdit(label="Model folder", mode="d")
        self.folder.tooltip = (
            "Where refined models are kept, each run in a new folder inside it (empty: a temporary folder); "
            "after a run it shows that run's folder, which 'Apply model' reads"
        )
        self.refine = PushButton(text="Refine with my annotations", enabled=False)
        self.refine.tooltip = (
            f"Train a network on the labelled slices of the support ({MIN_LABELLED_SLICES} or more) and the rest of "
            "the scan (PCCS), in the background; the result is the Labels layer '<image> refined'"
        )
        self.apply = PushButton(text="Apply model to image", enabled=False)
        self.apply.tooltip = "Segment the chosen image with the refined model in 'Model folder'"
        self.apply.tooltip += " (enabled once the folder holds one: Refine with my annotations writes it there)"
        self.refine.changed.connect(state.guarded(self.refine_with_annotations, "Refine"))
        self.apply.changed.connect(state.guarded(self.apply_refined_model, "Apply model"))
        self._watched: Any = None
        state.support_edited.connect(self.count)

    def refine_with_annotations(self) -> None:
        """Train a network on the support's labelled slices and the rest of the scan (PCCS) in the background."""
        state = self.state
        checked = state.checked()
        if checked is None:
            return
        image, support, names = checked
        axis = state.place(image)[0]
        state.take_corrections(image, support, axis)
        labelled = labelled_slices(support.data, axis)
        if labelled < MIN_LABELLED_SLICES:
            return state.refuse(
                f"'{support.name}' has {labelled} labelled slices; paint or correct at least {MIN_LABELLED_SLICES} "
                "(Add slice to support) before refining."
            )
        # every run gets a folder of its own (inside the chosen one): no model kept there before is overwritten
        chosen = str(self.folder.value or "")
        base = Path(chosen) if chosen and chosen != "." else None
        if base is not None and (base / REFINED_FILE).is_file():
            base = base.parent  # the folder of an earlier run: its new sibling
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="refined-", dir=base))
        kwargs = dict(
            image=np.asarray(image.data), labels=np.array(support.data, copy=True), out=out,
            spacing=tuple(float(s) for s in image.scale), axis=axis, modality=image.metadata.get("modality"),
            steps=self.steps.value, size=REFINE_SIZE, batch=REFINE_BATCH, device=state.settings(image)["device"],
            describe=state.runner.described.emit,
        )
        provenance = dict(method="pccs", steps=self.steps.value, size=REFINE_SIZE, support_layer=support.name,
                          labelled_slices=labelled, axis=axis)
        self._start(image, names, f"Refining on {labelled} labelled slices of '{support.name}'", refine_job, kwargs,
                    provenance)

    def apply_refined_model(self) -> None:
        """Segment the chosen image with the refined model in the model folder, in the background."""
        state = self.state
        image, folder = state.scan()[0], str(self.folder.value or "")
        if image is None:
            return state.refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        if not self.has_model():
            return state.refuse("Choose a model folder holding a refined model (Refine with my annotations writes one).")
        axis = state.place(image)[0]
        kwargs = dict(image=np.asarray(image.data), model=Path(folder) / REFINED_FILE, axis=axis,
                      spacing=tuple(float(s) for s in image.scale), modality=image.metadata.get("modality"),
                      device=state.settings(image)["device"])
        self._start(image, state.names() or {}, f"Applying the refined model to '{image.name}'", apply_job,
                    kwargs, dict(axis=axis))

    def has_model(self) -> bool:
        """Whether 'Model folder' holds a refined model to apply."""
        folder = str(self.folder.value or "")
        return bool(folder) and folder != "." and (Path(folder) / REFINED_FILE).is_file()

    def watch(self, support: Any) -> None:
        """Follow ``support``'s edits (None: none), so that 'Refine' is enabled once enough slices are labelled."""
        events = ("paint", "labels_update", "data", "set_data")  # set_data: undo and redo write the data silently
        if self._watched is not None:
            for name in events:
                getattr(self._watched.events, name).disconnect(self.count)
        self._watched = support
        if support is not None:
            for name in events:
                getattr(support.events, name).connect(self.count)
        self.count()

    def count(self, event: Any = None) -> None:
        """Count the support's labelled slices (from its data): 'Refine' says how many until it is enabled."""
        image, support = self.state.scan()
        axis = self.state.place(image)[0] if image is not None else 0
        count = 0 if support is None else labelled_slices(support.data, min(axis, support.data.ndim - 1))
        self.refine.enabled = count >= MIN_LABELLED_SLICES
        missing = f" ({count} of {MIN_LABELLED_SLICES} slices)" if count < MIN_LABELLED_SLICES else ""
        self.refine.text = f"Refine with my annotations{missing}"

    def _start(self, image: Any, names: dict[int, str], what: str, function: Any, kwargs: dict[str, Any],
               provenance: dict[str, Any]) -> None:
        """Run a refine or apply job; its labels go to '<image> refined' and its model to the model folder."""
        state = self.state

        def done(outcome: tuple[np.ndarray, Path]) -> None:
            labels, model = outcome
            if image not in state.viewer.layers:
                return
            self.folder.value = str(model.parent)
            layer = show_refined(state.viewer, image, labels, names, {**provenance, "model": str(model)})
            state.labels_shown.emit(layer)
            state.say(f"{what}: done. The result is '{layer.name}'; the model is in {model.parent}.")

        state.runner.start(Job(
            description=what, kwargs=kwargs, function=function,
            started=lambda: state.say(f"{what}..."),
            done=done,
            failed=state.failed,
            cancelled=lambda: state.say(f"Cancelled ({what})."),
            context=dict(image=image, support=state.scan()[1]),
        ))
