"""A :class:`Segmentation` as napari layers on the scan's grid, updated in place on re-runs.

- ``<image> prediction``: a Labels layer (never the support layer) with the
  structure names in its features and how it was made in its metadata;
- per structure, ``<image> <name> attention`` or ``... probability``: an Image
  layer tinted in the structure's label colour, additive, hidden until asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import Colormap

from ..core.engine import Segmentation
from .export import PROVENANCE
from .layers import layer_attributes, support_layer_data
from .structures import names_features

if TYPE_CHECKING:
    import napari

MAPS = ("attention", "probability", "none")


def prediction_name(image: napari.layers.Image) -> str:
    return f"{image.name} prediction"


def find_layer(viewer: napari.viewer.Viewer, name: str, kind: type, shape: tuple[int, ...]) -> Any | None:
    """The layer called ``name`` if it is a ``kind`` layer (``Labels``, ``Image``) of ``shape``."""
    layer = viewer.layers[name] if name in viewer.layers else None
    if not isinstance(layer, kind) or layer.data.shape != shape:
        return None
    return layer


def prediction_layer(viewer: napari.viewer.Viewer, image: napari.layers.Image, dtype: np.dtype) -> Labels:
    """``image``'s prediction layer, made anew (empty, on its grid) when it is missing or holds another dtype."""
    prediction = find_layer(viewer, prediction_name(image), Labels, image.data.shape)
    if prediction is None or prediction.data.dtype != dtype:
        data, kwargs, _ = support_layer_data(image.data.shape, layer_attributes(image), prediction_name(image))
        if prediction is not None:
            viewer.layers.remove(prediction)
        prediction = viewer.add_labels(data.astype(dtype), **kwargs)
    return prediction


def show_segmentation(
    viewer: napari.viewer.Viewer,
    image: napari.layers.Image,
    result: Segmentation,
    *,
    slices: np.ndarray,
    axis: int,
    names: dict[int, str],
    maps: str,
    provenance: dict[str, Any],
) -> napari.layers.Labels:
    """Write ``result`` on ``slices`` (along ``axis``) into the prediction and map layers; returns the prediction.

    Layers are made on ``image``'s grid the first time and updated in place after,
    so a re-run keeps their place, colours and visibility.
    """
    where = slice_index(slices, axis, image.data.shape)
    prediction = prediction_layer(viewer, image, result.labels.dtype)
    prediction.data[where] = result.labels[where]
    names = {v: names.get(v, f"structure {v}") for v in result.probabilities}
    prediction.features = names_features(names)
    prediction.metadata[PROVENANCE] = provenance
    prediction.refresh()
    if maps != "none":
        volumes = result.attention if maps == "attention" else result.probabilities
        for value, volume in volumes.items():
            _show_map(viewer, image, prediction, value, names[value], maps, volume, where)
    return prediction


def slice_index(slices: np.ndarray | list[int], axis: int, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """An index of ``slices`` along ``axis``: a plain view when they are all the slices (no copy)."""
    index: list[Any] = [slice(None)] * len(shape)
    if len(slices) != shape[axis]:
        index[axis] = np.asarray(slices, dtype=int)
    return tuple(index)


def _show_map(
    viewer: napari.viewer.Viewer,
    image: napari.layers.Image,
    prediction: napari.layers.Labels,
    value: int,
    name: str,
    kind: str,
    volume: np.ndarray,
    where: tuple[Any, ...],
) -> None:
    layer_name = f"{image.name} {name} {kind}"
    layer = find_layer(viewer, layer_name, Image, volume.shape)
    if layer is None:
        colour = np.asarray(prediction.get_color(value), dtype=float)[:3]
        layer = viewer.add_image(
            np.zeros(volume.shape, dtype=np.float32),
            name=layer_name,
            colormap=Colormap([[0.0, 0.0, 0.0, 1.0], [*colour, 1.0]], name=f"{name} {kind}"),
            blending="additive",
            contrast_limits=(0.0, 1.0),
            visible=False,
            scale=image.scale,
            translate=image.translate,
            rotate=image.rotate,
            metadata={"structure": value, "map": kind},
        )
    layer.data[where] = volume[where]
    if kind == "attention":
        layer.contrast_limits = attention_limits(layer.data, np.asarray(prediction.data) == value)
    layer.refresh()


def attention_limits(attention: np.ndarray, structure: np.ndarray) -> tuple[float, float]:
    """Contrast limits that make a structure stand out of its attention map ``[Z, Y, X]`` (cosine similarity).

    Much of a scan resembles a structure's prototypes somewhat (soft tissue, for an
    organ), so the tint starts above 95 % of the voxels outside the predicted
    ``structure`` (bool, same shape) and is full at the 99th percentile inside it;
    percentiles of every other voxel along each axis.
    """
    sample, inside = (np.asarray(a[::2, ::2, ::2]) for a in (attention, structure))
    outside = sample[~inside] if (~inside).any() else sample
    low = float(np.percentile(outside, 95))
    high = float(np.percentile(sample[inside], 99)) if inside.any() else float(sample.max())
    return low, max(high, low + 1e-3)
