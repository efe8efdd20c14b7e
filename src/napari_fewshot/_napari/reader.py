"""npe2 reader: NIfTI, NRRD, MetaImage files and DICOM series as Image or Labels layers, DICOM SEG files as Labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..io import Geometry, VolumeReadError, format_name, read_volume
from ..io.dicom import DicomSource
from ..io.dicom_seg import SEG_SOP_CLASS_UID, dicom_header, find_source_series, read_seg, seg_series_uids
from ..io.formats import is_seg_path
from .layers import LayerDataTuple, dicom_source, layer_attributes, volume_layer_data

PathOrPaths = str | list[str]


def _claims(path: str) -> bool:
    """A file in a format the plugin reads, a ``.dcm`` DICOM file, or a folder that is not a zarr store (DICOM)."""
    candidate = Path(path)
    if candidate.is_dir():
        return not any((candidate / marker).exists() for marker in (".zarray", ".zgroup", "zarr.json"))
    if is_seg_path(candidate):
        return dicom_header(candidate) is not None
    return format_name(candidate) is not None


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """napari's reader hook: :func:`read_layers` when every path is one the plugin reads."""
    paths = [path] if isinstance(path, str) else list(path)
    return read_layers if paths and all(_claims(p) for p in paths) else None


def read_layers(path: PathOrPaths) -> list[LayerDataTuple]:
    """One layer per path: label maps (by name) and DICOM SEG files as Labels, scans as Image with a display window.

    A ``.dcm`` file that is not a segmentation opens the whole series it is a slice of.
    """
    paths = [path] if isinstance(path, str) else list(path)
    return [_dicom_file_layer(p) if is_seg_path(p) else volume_layer_data(read_volume(p)) for p in paths]


def _dicom_file_layer(path: str) -> LayerDataTuple:
    """A DICOM SEG as Labels on its series' grid (:func:`_seg_layer`); a slice as the series in its folder."""
    header = dicom_header(path)
    if header is None:
        raise VolumeReadError(f"{path}: cannot be read as DICOM (missing, unreadable, or not a DICOM file)")
    if str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID:
        return _seg_layer(path)
    return volume_layer_data(read_volume(Path(path).parent, series=str(header.get("SeriesInstanceUID", ""))))


def _seg_layer(path: str) -> LayerDataTuple:
    """A DICOM SEG as a Labels layer on its series' grid, its segments' names as structure names.

    The series is the one open in the viewer (a layer read from it), else the
    one found beside the file (:func:`find_source_series`).
    """
    series = _open_series(seg_series_uids(path))
    if series is None:
        folder, uid = find_source_series(path)
        scan = read_volume(folder, series=uid)
        series = scan.geometry, scan.dicom
    labels, names = read_seg(path, *series)
    return volume_layer_data(labels, names=names)


def _open_series(uids: list[str]) -> tuple[Geometry, DicomSource] | None:
    """The grid and files of a layer of the current napari viewer read from one of the series ``uids``."""
    import napari

    viewer = napari.current_viewer()
    for layer in viewer.layers if viewer is not None else []:
        source = dicom_source(layer_attributes(layer))
        if source is not None and source.series_uid in uids:
            return Geometry.from_dict(layer.metadata["geometry"]), source
    return None
