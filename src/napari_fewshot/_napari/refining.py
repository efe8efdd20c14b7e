"""The widget's refine step: train on the user's labelled slices in the background, show and keep the model.

The jobs here run in the :class:`~napari_fewshot._napari.runner.SegmentationRunner`'s
worker thread (:func:`refine_job`, :func:`apply_job`); :func:`show_refined` runs on
the GUI thread with what they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels

from ..core.refined import segment_with_model
from ..core.support import painted_slices
from ..train.refine.trainer import refine_volume
from .export import PROVENANCE
from .layers import layer_attributes, support_layer_data
from .results import find_layer
from .structures import names_features

if TYPE_CHECKING:
    import napari

#: Labelled slices (of any structure) a support needs before it can be refined on (PCCS.md: 8 or more).
MIN_LABELLED_SLICES = 8


def labelled_slices(labels: np.ndarray, axis: int) -> int:
    """How many slices along ``axis`` of a label volume hold a painted voxel."""
    return len(painted_slices(np.moveaxis(np.asarray(labels), axis, 0)))


def refine_job(progress, cancel, describe, **kwargs: Any) -> tuple[np.ndarray, Path]:
    """:func:`refine_volume` with its progress as ``progress(step, steps, seconds_left)`` and a line of loss and
    time left."""

    def report(stage: str, done: int, total: int, values: dict[str, float]) -> None:
        progress(done, total, values["seconds_left"])
        describe(f"Refining: step {done} of {total}, loss {values['loss']:.3f}, about {values['seconds_left']:.0f} s left")

    return refine_volume(progress=report, cancel=cancel, **kwargs)


def apply_job(progress, cancel, **kwargs: Any) -> tuple[np.ndarray, Path]:
    """:func:`segment_with_model` as a job: the labels, and the model applied."""
    progress(0, 1, None)
    labels = segment_with_model(cancel=cancel, **kwargs)
    progress(1, 1, 0.0)
    return labels, Path(kwargs["model"])


def refined_name(image: napari.layers.Image) -> str:
    return f"{image.name} refined"


def show_refined(
    viewer: napari.viewer.Viewer, image: napari.layers.Image, labels: np.ndarray, names: dict[int, str],
    provenance: dict[str, Any],
) -> napari.layers.Labels:
    """Write ``labels`` into the Labels layer ``<image> refined`` on the image's grid (made the first time)."""
    layer = find_layer(viewer, refined_name(image), Labels, image.data.shape)
    if layer is None or layer.data.dtype != labels.dtype:
        data, kwargs, _ = support_layer_data(image.data.shape, layer_attributes(image), refined_name(image))
        if layer is not None:
            viewer.layers.remove(layer)
        layer = viewer.add_labels(data.astype(labels.dtype), **kwargs)
    layer.data[...] = labels
    values = [int(v) for v in np.unique(labels) if v]
    layer.features = names_features({v: names.get(v, f"structure {v}") for v in values})
    layer.metadata[PROVENANCE] = provenance
    layer.refresh()
    return layer
