"""Volumes to napari layer data and back, keeping the scan's true geometry.

A layer made from a volume shows it in its closest axis-aligned (LPS) layout
(see :mod:`napari_fewshot.io.orientation`), with ``scale``/``translate`` (and
``rotate`` for an oblique residual) in millimetres, so that world coordinates
are physical coordinates and grids of all kinds overlay.  ``layer.metadata``
keeps what is needed to write the data back exactly as the file had it:

- ``"geometry"``: the file's geometry (:meth:`Geometry.to_dict`, ITK order);
- ``"orientation"``: how the layer's array is laid out relative to the file's;
- ``"dicom"``: for a scan read from a DICOM series, its files and instance UIDs
  (:meth:`DicomSource.to_dict`), which a DICOM SEG export references.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.intensity import display_range, guess_modality
from ..io import Geometry, Volume, VolumeWriteError, label_dtype
from ..io.dicom import DicomSource
from ..io.formats import split_extension
from ..io.orientation import Orientation, closest_canonical, from_view, to_view, view_geometry
from .structures import names_features

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


#: The axes of a scan as the reader lays it out (LPS: axial slices along the first axis), named for the viewer.
AXIS_LABELS = ("axial (I→S)", "A→P", "R→L")


def volume_layer_data(volume: Volume, name: str | None = None, names: dict[int, str] | None = None) -> LayerDataTuple:
    """A napari layer data tuple (Image, or Labels for a label map) for ``volume``.

    ``names``: structure names by label value, for a label map (the layer's features).
    """
    geometry = volume.geometry
    orientation = closest_canonical(geometry)
    kwargs: dict[str, Any] = {
        "name": name or split_extension(geometry.source)[0] or "volume",
        "metadata": {"geometry": geometry.to_dict(), "orientation": orientation.to_dict()},
        "axis_labels": AXIS_LABELS,
        **({"features": names_features(names)} if names else {}),
        **view_geometry(geometry, orientation).napari_kwargs(),
    }
    if volume.dicom is not None:
        kwargs["metadata"]["dicom"] = volume.dicom.to_dict()
    data = to_view(volume.data, orientation)
    if volume.is_label_map:
        return data, kwargs, "labels"
    modality = guess_modality(volume.data)
    kwargs["metadata"]["modality"] = modality
    kwargs.update(colormap="gray", contrast_limits=display_range(volume.data, modality))
    return data, kwargs, "image"


def file_layout(
    data: np.ndarray,
    metadata: dict[str, Any],
    scale: Any,
    translate: Any,
    rotate: Any | None = None,
) -> tuple[np.ndarray, Geometry]:
    """A layer's data in its file's layout, and the geometry to write it with.

    Uses ``metadata["geometry"]`` and ``metadata["orientation"]`` when they fit the
    data's shape (layers from this plugin, and label layers made on their grid);
    otherwise the layer's own ``scale``/``translate``/``rotate`` (napari's world
    coordinates taken as millimetres).
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise VolumeWriteError(f"napari-fewshot writes 3D volumes (z, y, x); this layer has shape {data.shape}")
    if "geometry" in metadata:
        geometry = Geometry.from_dict(metadata["geometry"])
        orientation = Orientation.from_dict(metadata.get("orientation", Orientation().to_dict()))
        if view_geometry(geometry, orientation).shape == data.shape:
            return from_view(data, orientation), geometry
    return data, Geometry.from_napari_transform(data.shape, scale, translate, rotate, str(data.dtype))


def dicom_source(attributes: dict[str, Any]) -> DicomSource | None:
    """The DICOM series a layer's scan was read from (``metadata["dicom"]`` of its ``attributes``), or None."""
    metadata = attributes.get("metadata", {})
    return DicomSource.from_dict(metadata["dicom"]) if "dicom" in metadata else None


def layer_attributes(layer: Any) -> dict[str, Any]:
    """A layer's ``scale``, ``translate``, ``rotate`` and ``metadata``: what its grid and file geometry need."""
    return {key: getattr(layer, key) for key in ("scale", "translate", "rotate", "metadata")}


def support_layer_data(shape: tuple[int, ...], image: dict[str, Any], name: str) -> LayerDataTuple:
    """An empty ``uint8`` Labels layer on an image layer's grid, ready to paint.

    ``image`` holds the image layer's ``scale``, ``translate``, ``rotate`` and
    ``metadata``; the new layer shares its transform and its file geometry, so it
    overlays voxel for voxel and exports on the scan's grid.
    """
    metadata = {key: image["metadata"][key] for key in ("geometry", "orientation", "dicom") if key in image["metadata"]}
    kwargs = {key: image[key] for key in ("scale", "translate", "rotate")}
    if "orientation" in metadata and len(shape) == len(AXIS_LABELS):
        kwargs["axis_labels"] = AXIS_LABELS
    return np.zeros(shape, dtype=np.uint8), {**kwargs, "name": name, "metadata": metadata}, "labels"


def labels_for_writing(data: np.ndarray, attributes: dict[str, Any]) -> tuple[np.ndarray, Geometry]:
    """A Labels layer's data and geometry as they go to disk: file layout, smallest integer type."""
    file_data, geometry = file_layout(
        data, attributes.get("metadata", {}), attributes["scale"], attributes["translate"], attributes.get("rotate")
    )
    dtype = label_dtype(file_data)
    return file_data.astype(dtype, copy=False), geometry.with_pixel_type(str(dtype))



def same_grid(image: Any, labels: Any) -> bool:
    """Whether Labels layer ``labels`` lies voxel for voxel on image layer ``image``'s grid."""
    return (
        image.data.shape == labels.data.shape
        and np.allclose(image.scale, labels.scale)
        and np.allclose(image.translate, labels.translate)
        and np.allclose(image.rotate, labels.rotate)
    )


def grid_message(image: Any, labels: Any) -> str:
    """Why ``labels`` cannot be used with ``image`` (not on its grid), and what to do instead."""
    return (
        f"'{labels.name}' (shape {labels.data.shape}, spacing {tuple(np.round(labels.scale, 3))}) is not on the grid of "
        f"'{image.name}' (shape {image.data.shape}, spacing {tuple(np.round(image.scale, 3))}); "
        "press 'New support layer' to paint on the image's grid."
    )
