"""npe2 reader: NIfTI, NRRD, MetaImage files and DICOM folders as Image or Labels layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..io import format_name, read_volume
from .layers import LayerDataTuple, volume_layer_data

PathOrPaths = str | list[str]


def _claims(path: str) -> bool:
    """A file in a format the plugin reads, or a folder that is not a zarr store (DICOM)."""
    candidate = Path(path)
    if candidate.is_dir():
        return not any((candidate / marker).exists() for marker in (".zarray", ".zgroup", "zarr.json"))
    return format_name(candidate) is not None


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerDataTuple]] | None:
    """napari's reader hook: :func:`read_layers` when every path is one the plugin reads."""
    paths = [path] if isinstance(path, str) else list(path)
    return read_layers if paths and all(_claims(p) for p in paths) else None


def read_layers(path: PathOrPaths) -> list[LayerDataTuple]:
    """One layer per path: label maps (by name) as Labels, scans as Image with a display window."""
    paths = [path] if isinstance(path, str) else list(path)
    return [volume_layer_data(read_volume(p)) for p in paths]
