"""Export a Labels layer with its scan's geometry (or as a DICOM SEG) and a JSON sidecar that says how it was made."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..io import sidecar_path, write_volume
from ..io.dicom_seg import write_seg
from ..io.formats import is_seg_path
from .layers import dicom_source, labels_for_writing

#: ``layer.metadata`` key under which the widget records how a prediction was made.
PROVENANCE = "napari_fewshot"


def record_run(earlier: dict[str, Any] | None, run: dict[str, Any], replaces_all: bool) -> dict[str, Any]:
    """The provenance of a layer after ``run`` wrote into it: ``run``'s record, with ``earlier_runs`` listing
    the runs whose slices it still holds (none when ``run`` replaced every slice; otherwise ``earlier``,
    the layer's provenance before, and the runs it listed, newest first)."""
    if replaces_all or not earlier:
        return {**run, "earlier_runs": []}
    before = {key: value for key, value in earlier.items() if key != "earlier_runs"}
    return {**run, "earlier_runs": [before, *earlier.get("earlier_runs", [])]}


def export_labels(path: str | Path, data: Any, attributes: dict[str, Any], names: dict[int, str]) -> tuple[Path, Path]:
    """Write a Labels layer to ``path`` (NIfTI, NRRD or MHA) on its scan's grid, and its sidecar.

    A ``.dcm`` path writes a DICOM SEG of the DICOM series the scan was read from
    (:func:`~napari_fewshot.io.dicom_seg.write_seg`; refused for a scan read from a
    file), one segment per structure named in ``names``.

    ``attributes`` are the layer's ``scale``, ``translate``, ``rotate`` and
    ``metadata``; the sidecar (``mask.json`` beside ``mask.nii.gz``) holds the
    structure ``names`` by label value, the grid, and, for a prediction, the
    support slices, encoder, head and options that produced it.  Both files are
    written atomically, together: both or neither.  Returns ``(mask path, sidecar path)``; raises
    :class:`~napari_fewshot.io.VolumeWriteError` with nothing written when the
    path is not writable.
    """
    file_data, geometry = labels_for_writing(data, attributes)
    metadata = attributes.get("metadata", {})
    record = {
        "labels": {str(value): name for value, name in sorted(names.items())},
        "geometry": geometry.to_dict(),
        "segmentation": metadata.get(PROVENANCE),
        "written_by": f"napari-fewshot {__version__}",
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if is_seg_path(path):
        written = write_seg(path, file_data, geometry, dicom_source(attributes), names, sidecar=record)
    else:
        written = write_volume(path, file_data, geometry, sidecar=record)  # both or neither; the path checked first
    return written, sidecar_path(written)
