"""DICOM SEG: the label map of a scan read from a DICOM series, as a segmentation of that series, and back.

highdicom builds and parses the objects; this module chooses their content and
checks that they fit the series:

- written (:func:`write_seg`): a BINARY segmentation whose segment ``v`` is
  label value ``v`` (1 up to the largest value present or named, so a structure
  named but not found is an empty segment), named after its structure and coded
  where the name is a known organ (:mod:`napari_fewshot.io.anatomy`), made by
  napari-fewshot <version> (SEMIAUTOMATIC).  The frames of slice ``k`` reference
  that slice's instance and sit at its position; the patient, study and frame
  of reference are the series'; empty frames are left out.
- read (:func:`read_seg`): onto the grid of the series it was made on, segment
  ``v`` as label value ``v``, with the segments' names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .anatomy import anatomy_codes
from .dicom import DicomSource, dicom_header, find_series, text_of
from .errors import VolumeReadError, VolumeWriteError
from .formats import SEG_EXTENSION, WRITE_EXTENSIONS, is_seg_path
from .geometry import Geometry
from .read import Volume
from .write import check_target, write_volumes

#: SOP Class UID of a DICOM Segmentation Storage object.
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Series number of the segmentations written (DICOM requires one; viewers sort series by it).
SERIES_NUMBER = 300
#: How far a slice may lie from its place on the scan's grid, in voxels along each axis.
POSITION_TOLERANCE = 0.5
#: Tolerance of pixel spacing (mm) and orientation (direction cosines) between a frame and the scan's grid.
GRID_TOLERANCE = 1e-3
#: The most segments a DICOM SEG holds (Segment Number is a 16-bit value).
MAX_SEGMENTS = 65535
#: The character set of the text written (structure names in any script): UTF-8.
CHARACTER_SET = "ISO_IR 192"
#: What a DICOM SEG needs of every slice it references (by keyword), with the names a message gives them.
REQUIRED = (
    ("SOPClassUID", "SOP Class UID (0008,0016), in its dataset or its file meta"),
    ("SOPInstanceUID", "SOP Instance UID (0008,0018), in its dataset or its file meta"),
    ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
    ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
    ("ImagePositionPatient", "Image Position (Patient) (0020,0032)"),
    ("ImageOrientationPatient", "Image Orientation (Patient) (0020,0037)"),
    ("PixelSpacing", "Pixel Spacing (0028,0030)"),
)
#: Patient and study attributes a DICOM SEG copies from its series, which DICOM lets be empty (type 2) and an
#: anonymised series may lack: added empty to the headers in memory.
EMPTY_ALLOWED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def is_seg_file(path: str | Path) -> bool:
    """True when ``path`` is a DICOM file that holds a segmentation (read from its header only)."""
    header = dicom_header(path)
    return header is not None and str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID


# -- writing -----------------------------------------------------------------------------
def check_seg_writable(
    path: str | Path, geometry: Geometry, source: DicomSource | None, inputs: Iterable[str | Path] = ()
) -> Path:
    """``path`` (user-expanded) when a DICOM SEG of the scan ``geometry`` may go there; else :class:`VolumeWriteError`.

    ``source`` is the DICOM series the scan was read from (``Volume.dicom``, or a
    layer's ``metadata["dicom"]``); None for a scan read from a file, which is
    refused.  The series' own files, like ``inputs``, are never written over.
    The series' headers are read and a segmentation of its first slice is built
    (not written), so that all that keeps a DICOM SEG of the series from being
    written (slices gone or changed, identifiers it lacks) is refused before a run.
    """
    path = seg_target(path, geometry, source, inputs)
    datasets = _source_datasets(path, source, geometry)
    probe = np.zeros((1, int(datasets[0].Rows), int(datasets[0].Columns)), np.uint8)
    probe[0, 0, 0] = 1
    _segmentation(path, source, datasets[:1], probe, [_segment(1, "structure 1")])
    return path


def seg_target(
    path: str | Path, geometry: Geometry, source: DicomSource | None, inputs: Iterable[str | Path] = ()
) -> Path:
    """``path`` when it may be written as a DICOM SEG of ``source`` (see :func:`check_seg_writable`), headers unread:
    what is left to check when :func:`seg_writer`, which reads them, follows."""
    path = Path(path).expanduser()
    if not is_seg_path(path):
        raise VolumeWriteError(f"{path}: a DICOM SEG file is named {SEG_EXTENSION}")
    if source is None:
        raise VolumeWriteError(
            f"{path}: DICOM SEG is written only for a scan read from a DICOM series, whose slices it references; "
            f"{geometry.source or 'this scan'} was not read from one. Write the mask as "
            f"{', '.join(WRITE_EXTENSIONS)} instead."
        )
    return check_target(path, geometry, [*inputs, *source.files])


def write_seg(
    path: str | Path,
    labels: np.ndarray,
    geometry: Geometry,
    source: DicomSource | None,
    names: dict[int, str],
    sidecar: dict[str, Any] | None = None,
) -> Path:
    """Write the label map ``labels`` of a scan read from a DICOM series as a DICOM SEG file.

    Parameters
    ----------
    path : the ``.dcm`` file to write.
    labels : array (z, y, x) of label values on ``geometry``'s grid, in the
        series' slice order (as :func:`~napari_fewshot.io.read_volume` reads it).
    geometry : the scan's grid, read from the series.
    source : the series' files (``Volume.dicom``); None is refused.
    names : structure names by label value; a value without a name is written as
        ``structure <value>``.  Segment ``v`` is label value ``v``, for every ``v``
        from 1 to the largest value present or named.
    sidecar : a record written beside it as JSON (``mask.json``), both or neither.

    The file is written under a temporary name, read back and compared with
    ``labels``, then renamed over ``path``.  Returns the path written; raises
    :class:`VolumeWriteError` naming the problem, with nothing on disk changed.
    """
    path = seg_target(path, geometry, source)
    writer = seg_writer(path, labels, geometry, source, names)
    return write_volumes([], {path: sidecar} if sidecar is not None else None, {path: writer})[0]


def seg_writer(
    path: Path, labels: np.ndarray, geometry: Geometry, source: DicomSource, names: dict[int, str]
) -> Callable[[Path], None]:
    """A function that writes the DICOM SEG of ``labels`` to a temporary file and checks it reads back as ``labels``.

    The segmentation is built here, from the series' headers as they are now,
    so that every refusal comes before anything is written; ``path`` (checked
    by :func:`check_seg_writable`) is named in the errors.  See
    :func:`write_seg` for the parameters.
    """
    if tuple(labels.shape) != geometry.shape:
        raise VolumeWriteError(
            f"{path}: the labels' shape {tuple(labels.shape)} (z, y, x) does not match the scan's grid {geometry.shape}"
        )
    if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
        raise VolumeWriteError(f"{path}: DICOM SEG holds label values 1, 2, ...; these labels are {labels.dtype} "
                               "or negative")
    datasets = _source_datasets(path, source, geometry)
    largest = int(labels.max()) if labels.size else 0
    if not largest:
        raise VolumeWriteError(f"{path}: the label map is empty; a DICOM SEG needs at least one labelled voxel")
    count = max([largest, *names])
    if count > MAX_SEGMENTS:
        raise VolumeWriteError(f"{path}: label value {count}; DICOM SEG numbers its segments 1 to {MAX_SEGMENTS}")
    segments = labels.astype(np.uint8 if count < 256 else np.uint16, copy=False)  # segment v = label value v
    descriptions = [_segment(v, names.get(v) or f"structure {v}") for v in range(1, count + 1)]
    seg = _segmentation(path, source, datasets, segments, descriptions)

    def write(temporary: Path) -> None:
        seg.save_as(temporary)
        try:
            back = hd.seg.segread(temporary).get_pixels_by_source_instance(
                list(source.instance_uids), combine_segments=True, assert_missing_frames_are_empty=True
            )
            whole, reason = bool(np.array_equal(back, segments)), "its frames differ from the labels"
        except Exception as error:  # a truncated or corrupt file: whatever pydicom or highdicom raise
            whole, reason = False, f"{type(error).__name__}: {error}"
        if not whole:
            raise VolumeWriteError(
                f"{path}: the DICOM SEG written does not read back whole ({reason}); is the disk full? "
                f"Nothing was changed: free some space in {path.parent} and write it again."
            )

    return write


def _segmentation(
    path: Path,
    source: DicomSource,
    datasets: list[pydicom.Dataset],
    segments: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
) -> hd.seg.Segmentation:
    """The BINARY segmentation of the slices ``datasets`` (headers) whose segment ``v`` is where ``segments`` is ``v``.

    Its text is UTF-8 (ISO_IR 192), so that names in any script are kept.
    """
    try:
        return hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=segments,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-fewshot",
            manufacturer_model_name="napari-fewshot",
            software_versions=_software_version(),
            device_serial_number="napari-fewshot",
            series_description="napari-fewshot segmentation",
            content_label="SEGMENTATION",
            content_description=", ".join(d.segment_label for d in descriptions)[:64],
            omit_empty_frames=True,
            specific_character_set=CHARACTER_SET,
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # what highdicom says of slices it cannot take
        raise VolumeWriteError(
            f"{path}: no DICOM SEG can be made for series {source.series_uid} ({type(error).__name__}: {error}); "
            f"write the mask as {', '.join(WRITE_EXTENSIONS)} instead."
        ) from error


def _segment(number: int, name: str) -> hd.seg.SegmentDescription:
    """Segment ``number`` named ``name``, coded as its anatomy where the name is known."""
    category, kind = anatomy_codes(name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="napari-fewshot", family=codes.cid7162.ArtificialIntelligence, version=_software_version()
        ),
    )


def _source_datasets(path: Path, source: DicomSource, geometry: Geometry) -> list[pydicom.Dataset]:
    """The headers of the series' slice files, checked to be there, unchanged, identified and on ``geometry``'s grid.

    Identifiers a dataset leaves blank are taken from its file meta
    (:func:`~napari_fewshot.io.dicom.dicom_header`); the patient and study
    attributes a SEG copies and DICOM lets be empty (:data:`EMPTY_ALLOWED`) are
    added empty where a slice lacks them.  Both change only the headers in
    memory, never the files.
    """
    instead = f"write the mask as {', '.join(WRITE_EXTENSIONS)} instead"
    missing = [f for f in source.files if not Path(f).is_file()]
    if missing:
        raise VolumeWriteError(
            f"{path}: the DICOM series {source.series_uid} this scan was read from is no longer where it was: "
            f"{len(missing)} of its {len(source.files)} slice files are missing (e.g. {missing[0]}). "
            f"Put the series back, or open it from its new place (and the labels on it) and export again; or {instead}."
        )
    datasets = []
    for file, uid in zip(source.files, source.instance_uids):
        dataset = dicom_header(file)
        if dataset is None:
            raise VolumeWriteError(
                f"{path}: {file}, a slice of the DICOM series {source.series_uid}, can no longer be read as DICOM: "
                "it was replaced or damaged since the scan was opened. Keep the series unchanged until the mask is "
                f"written (restore the file, open the series again), or {instead}."
            )
        if text_of(dataset, "SOPInstanceUID") != uid:
            raise VolumeWriteError(
                f"{path}: the DICOM series {source.series_uid} has changed since the scan was opened: {file} now holds "
                f"instance {text_of(dataset, 'SOPInstanceUID') or '(none)'}, not {uid}. Open the series again, "
                f"or {instead}."
            )
        datasets.append(dataset)
    for keyword, name in REQUIRED:
        lacking = [f for f, dataset in zip(source.files, datasets) if not text_of(dataset, keyword)]
        if lacking:
            raise VolumeWriteError(
                f"{path}: {lacking[0]} holds no {name} ({len(lacking)} of {len(datasets)} slices), which a DICOM "
                f"SEG needs of every slice it references; {instead}."
            )
    for dataset in datasets:
        for keyword in EMPTY_ALLOWED:
            if dataset.get(keyword) is None:
                setattr(dataset, keyword, "")
    first = datasets[0]
    problem = _off_grid(
        geometry,
        np.arange(len(datasets)),
        np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets]),
        [float(v) for v in first.ImageOrientationPatient],
        [float(v) for v in first.PixelSpacing],
        (int(first.Rows), int(first.Columns)),
    )
    if problem:
        raise VolumeWriteError(f"{path}: the DICOM series {source.series_uid} does not lie on the scan's grid: {problem}")
    return datasets


def _off_grid(
    geometry: Geometry,
    slices: np.ndarray,
    positions: np.ndarray,
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    size: tuple[int, int],
) -> str | None:
    """What keeps DICOM frames from lying on slices of ``geometry``'s grid, or None when they do.

    ``slices`` (m,) are the slice indices (array axis 0) the frames should lie on,
    ``positions`` (m, 3) their Image Position (Patient) in LPS mm, ``orientation``
    their 6 Image Orientation (Patient) cosines, ``pixel_spacing`` (row, column)
    in mm and ``size`` (rows, columns).  A position may be off its slice by less
    than :data:`POSITION_TOLERANCE` voxels along each axis.
    """
    nx, ny, _ = geometry.size
    if tuple(size) != (ny, nx):
        return f"its frames have {size[0]} x {size[1]} pixels, the scan's slices {ny} x {nx}"
    direction = geometry.direction_matrix
    if not np.allclose(orientation, [*direction[:, 0], *direction[:, 1]], atol=GRID_TOLERANCE):
        scan = list(np.round(direction[:, :2].T.ravel(), 4))
        return f"its frames are oriented {list(np.round(orientation, 4))}, the scan's slices {scan}"
    if not np.allclose(pixel_spacing, geometry.spacing[1::-1], atol=GRID_TOLERANCE):
        return f"its pixels are {tuple(pixel_spacing)} mm, the scan's {geometry.spacing[1::-1]} mm"
    expected = geometry.index_to_physical(np.stack([slices, np.zeros_like(slices), np.zeros_like(slices)], axis=-1))
    offsets = (np.asarray(positions, dtype=float) - expected) @ direction / np.asarray(geometry.spacing)  # in voxels
    off = np.flatnonzero(np.any(np.abs(offsets) >= POSITION_TOLERANCE, axis=1))
    if len(off):
        i = off[0]
        return (
            f"{len(off)} frame(s) lie off the scan's slices, e.g. the one of slice {slices[i]} at "
            f"{tuple(round(float(v), 3) for v in positions[i])} mm, {np.abs(offsets[i]).max():.2f} voxels from it"
        )
    return None


# -- reading -----------------------------------------------------------------------------
def seg_series_uids(path: str | Path) -> list[str]:
    """The Series Instance UIDs of the series a DICOM SEG file was made on (from its header)."""
    header = dicom_header(path)
    if header is None:
        raise VolumeReadError(f"{path}: cannot be read as DICOM (missing, unreadable, or not a DICOM file)")
    return [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]


def find_source_series(path: str | Path) -> tuple[Path, str]:
    """The folder and UID of the DICOM series a SEG file was made on, looked for near the file.

    Looks in the SEG's folder, the folders inside it, and the folders beside it
    (a study exported as one folder per series).  Raises :class:`VolumeReadError`
    naming the series when it is in none of them.
    """
    path = Path(path).expanduser().resolve()
    wanted = seg_series_uids(path)
    folder = path.parent
    candidates = [folder, *_subfolders(folder)]
    if folder.parent != folder:
        candidates += [p for p in _subfolders(folder.parent) if p != folder]
    for candidate in candidates:
        for series in find_series(candidate):
            if series.uid in wanted:
                return candidate, series.uid
    raise VolumeReadError(
        f"{path}: the DICOM series this segmentation was made on ({', '.join(wanted) or 'none named'}) is not "
        f"beside it (looked in {folder}, the folders in it and beside it). Open that series first, then this file; "
        "or keep the file beside the series' folder."
    )


def _subfolders(folder: Path) -> list[Path]:
    """The folders directly inside ``folder``, by name (none where it cannot be listed)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def read_seg(path: str | Path, geometry: Geometry, source: DicomSource) -> tuple[Volume, dict[int, str]]:
    """Read a DICOM SEG onto the grid of the series it was made on.

    Parameters
    ----------
    path : the SEG file.
    geometry : the series' grid, as read from it.
    source : the series' files and instance UIDs, as read (``Volume.dicom``).

    Returns
    -------
    labels : a label map on ``geometry``'s grid (``source`` is ``path``): its data
        (z, y, x) holds unsigned integers in the series' slice order, segment
        ``v`` of the file as label value ``v``.
    names : the segments' labels by label value.

    Raises :class:`VolumeReadError` when the file is not a readable segmentation,
    was made on another series, or its frames do not lie on the series' slices,
    and when its segments overlap (a label map holds one structure per voxel).
    """
    path = Path(path).expanduser()
    if not is_seg_file(path):
        raise VolumeReadError(f"{path}: not a DICOM SEG file (a DICOM segmentation object)")
    try:
        seg = hd.seg.segread(path)
    except Exception as error:  # a corrupt or truncated file: whatever pydicom or highdicom raise
        raise VolumeReadError(f"{path}: the DICOM SEG cannot be read ({type(error).__name__}: {error})") from error
    made_on = sorted({series for _, series, _ in seg.get_source_image_uids()})
    if source.series_uid not in made_on:
        raise VolumeReadError(
            f"{path}: this segmentation was made on DICOM series {', '.join(made_on) or '(none named)'}, not on "
            f"{source.series_uid} ({geometry.source or 'the open scan'}); open the series it belongs to"
        )
    frames = [_frame(seg, i) for i in range(int(seg.get("NumberOfFrames", 1)))]
    index = {uid: k for k, uid in enumerate(source.instance_uids)}
    slices = np.array([index.get(uid, -1) for uid, _ in frames])
    if len(slices) and slices.min() < 0:
        elsewhere = int(np.count_nonzero(slices < 0))
        raise VolumeReadError(
            f"{path}: {elsewhere} of its {len(frames)} frames do not match a slice of series {source.series_uid} "
            "(they reference no slice, or slices the series does not hold); it was made on another version or "
            "another grid of the series. Segment the series as it is, or resample the segmentation onto it."
        )
    problem = _off_grid(
        geometry,
        slices,
        np.array([position for _, position in frames]).reshape(-1, 3),
        [float(v) for v in _group(seg, 0, "PlaneOrientationSequence").ImageOrientationPatient],
        [float(v) for v in _group(seg, 0, "PixelMeasuresSequence").PixelSpacing],
        (int(seg.Rows), int(seg.Columns)),
    )
    if problem:
        raise VolumeReadError(f"{path}: its frames do not match the slices of series {source.series_uid}: {problem}")
    try:
        labels = seg.get_pixels_by_source_instance(
            list(source.instance_uids), combine_segments=True, ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )
    except RuntimeError as error:  # highdicom's word for overlapping segments
        raise VolumeReadError(
            f"{path}: its segments overlap ({error}); napari-fewshot reads a segmentation as a label map, one "
            "structure per voxel. Export the segments without overlap."
        ) from error
    names = {number: seg.get_segment_description(number).segment_label for number in seg.segment_numbers}
    grid = replace(geometry, pixel_type=str(labels.dtype), source=str(path))
    return Volume(labels, grid, is_label_map=True, dicom=source), names


def _group(seg: hd.seg.Segmentation, frame: int, name: str) -> pydicom.Dataset:
    """The functional group ``name`` of ``frame``: its own, or the one shared by all frames."""
    per_frame = seg.PerFrameFunctionalGroupsSequence[frame]
    return (per_frame if name in per_frame else seg.SharedFunctionalGroupsSequence[0]).get(name)[0]


def _frame(seg: hd.seg.Segmentation, frame: int) -> tuple[str | None, list[float]]:
    """The SOP Instance UID of the source slice ``frame`` was derived from (None if it names none), and its position."""
    group = seg.PerFrameFunctionalGroupsSequence[frame]
    uid = None
    for derivation in group.get("DerivationImageSequence", []):
        for image in derivation.get("SourceImageSequence", []):
            uid = str(image.ReferencedSOPInstanceUID)
    return uid, [float(v) for v in _group(seg, frame, "PlanePositionSequence").ImagePositionPatient]


@cache
def _software_version() -> str:
    """napari-fewshot's version as installed (its distribution's metadata: ``io`` imports nothing above it)."""
    try:
        return version("napari-fewshot")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
