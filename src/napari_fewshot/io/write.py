"""Write a volume or label map with its geometry, and its JSON sidecar, atomically."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import VolumeReadError, VolumeWriteError, itk_reason
from .formats import SEG_EXTENSION, WRITE_EXTENSIONS, split_extension
from .geometry import Geometry
from .headers import check_file

#: The most bytes one name in a path may have (ext4, XFS, APFS, NTFS: 255).
NAME_MAX = 255
#: What a temporary file's name adds to its target's beyond ``.partial.EXT``: two dots, a process id of up to
#: 7 digits, a hyphen and :func:`tempfile.mkstemp`'s 8 random characters.
_TEMPORARY_MARKS = 2 + 7 + 1 + 8


def check_writable(path: str | Path, geometry: Geometry, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` (user-expanded) when :func:`write_volume` could write there; else :class:`VolumeWriteError`.

    Checks the extension, that the folder exists and may be written, and that
    ``path`` is neither the scan ``geometry`` was read from nor one of ``inputs``
    (the other files a command reads or writes): a caller can ask before a long
    computation.
    """
    path = Path(path).expanduser()
    ext = split_extension(path)[1]
    if ext not in WRITE_EXTENSIONS:
        seg = " as a volume (DICOM SEG holds only label maps of a scan read from a DICOM series)"
        raise VolumeWriteError(
            f"{path}: cannot write '{ext or 'no extension'}'{seg if ext == SEG_EXTENSION else ''}; "
            f"use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    return check_target(path, geometry, inputs)


def check_target(path: str | Path, geometry: Geometry, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` (user-expanded) when a file of any format may be written there; else :class:`VolumeWriteError`.

    :func:`check_writable` without the extension: the folder exists and may be
    written, and ``path`` is neither the scan ``geometry`` was read from nor one
    of ``inputs``.
    """
    path = check_name_lengths(path)
    ext = split_extension(path)[1]
    if not path.parent.is_dir():
        raise VolumeWriteError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise VolumeWriteError(f"{path}: this is a folder; give a file name inside it (e.g. {path / ('mask' + ext)})")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise VolumeWriteError(
            f"{path}: the folder {path.parent} is not writable (permission denied or a read-only disk); "
            "choose another folder"
        )
    if geometry.source and _same_file(path, geometry.source):
        raise VolumeWriteError(
            f"{path}: this is the scan the data belongs to; writing here would overwrite it. Choose another file name."
        )
    for other in inputs:
        if _same_file(path, other):
            raise VolumeWriteError(
                f"{path}: this file is also an input or another output of the same command; writing here would "
                "overwrite it. Choose another file name."
            )
    return path


def check_output_folder(path: str | Path) -> Path:
    """``path`` (user-expanded) when a run can write into it (it is made by the run when missing); else
    :class:`VolumeWriteError`.

    For commands that write a folder of results (train, refine, evaluate) and for
    caches, asked before the work: ``path`` must be a folder or not exist yet, and the nearest
    existing folder on its way must be writable.
    """
    path = check_name_lengths(path)
    if path.exists() and not path.is_dir():
        raise VolumeWriteError(
            f"{path}: this is a file, not a folder; give a folder (it is created when missing)"
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise VolumeWriteError(f"{path}: {existing} is a file, so no folder can be created under it; give another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VolumeWriteError(
            f"{path}: the folder {existing} is not writable (permission denied or a read-only disk); "
            "choose another folder"
        )
    return path


def check_name_lengths(path: str | Path) -> Path:
    """``path`` (user-expanded) when each of its names fits in :data:`NAME_MAX` bytes, else
    :class:`VolumeWriteError`."""
    path = Path(path).expanduser()
    for name in path.parts:
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise VolumeWriteError(
                f"{path}: the name {name[:24]}... is {size} bytes long, and a file system takes at most {NAME_MAX} "
                "bytes per name; choose a shorter name"
            )
    return path


def _same_file(path: Path, other: str | Path) -> bool:
    """True when ``path`` and ``other`` name one file (or would, once written)."""
    other = Path(other).expanduser()
    if path.exists() and other.exists():
        return path.samefile(other)
    return path.resolve() == other.resolve()


def write_volume(path: str | Path, data: np.ndarray, geometry: Geometry, sidecar: dict[str, Any] | None = None) -> Path:
    """Write ``data`` (z, y, x) on ``geometry``'s grid as NIfTI, NRRD or MetaImage (``.mha``).

    The format follows the extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``);
    spacing, origin and direction come from ``geometry``; the pixel type is
    ``data``'s (booleans are written as ``uint8``, ``float16`` as ``float32``).
    ``sidecar``: a record written with it as JSON (:func:`sidecar_path`), both or
    neither.  See :func:`write_volumes`, which this calls for one volume.

    Returns the path written.  Raises :class:`VolumeWriteError` naming the
    problem; nothing on disk changes then.
    """
    return write_volumes([(path, data, geometry)], {path: sidecar} if sidecar is not None else None)[0]


def write_volumes(
    volumes: Sequence[tuple[str | Path, np.ndarray, Geometry]],
    sidecars: dict[str | Path, dict[str, Any]] | None = None,
    writers: dict[Path, Callable[[Path], None]] | None = None,
) -> list[Path]:
    """Write each ``(path, data, geometry)`` as :func:`write_volume` does, all of them or none.

    ``sidecars``: by volume path, records to write beside those volumes as JSON,
    in the same all-or-none commit.  ``writers``: files of other formats to
    commit with them, by their (checked) path, each a function that writes and
    checks a temporary file (e.g. a DICOM SEG, :func:`~napari_fewshot.io.dicom_seg.seg_writer`).

    Every file is written next to its ``path`` under a temporary name, flushed to
    disk and read back (its length against its header, which also catches a full
    disk that ITK's writers do not report); only when all are whole are they
    renamed over their paths.  An interrupted or failed write leaves no partial
    file and keeps every file that was there, so a mask and its probabilities
    never come from two runs.  Writing over the file a ``geometry`` was read from,
    or twice to one path, is refused.

    Returns the paths written.  Raises :class:`VolumeWriteError` naming the
    problem; nothing on disk changes then.
    """
    writes: dict[Path, Callable[[Path], None]] = dict(writers or {})
    for path, data, geometry in volumes:
        path = check_writable(path, geometry, inputs=writes)
        if tuple(data.shape) != geometry.shape:
            raise VolumeWriteError(
                f"{path}: the data's shape {tuple(data.shape)} (z, y, x) does not match the grid "
                f"{geometry.shape} it is to be written on"
            )
        writes[path] = _image_writer(path, data, geometry)
    volume_paths = list(writes)
    for path, record in (sidecars or {}).items():
        sidecar, write = _sidecar_writer(Path(path).expanduser(), record)
        writes[sidecar] = write
    atomic_write_all(writes)
    return volume_paths


def _image_writer(path: Path, data: np.ndarray, geometry: Geometry) -> Callable[[Path], None]:
    """A function that writes ``data`` on ``geometry`` to a temporary file and checks it reads back whole."""
    if data.dtype == bool or data.dtype == np.float16:  # types ITK lacks, widened without loss
        data = data.astype(np.uint8 if data.dtype == bool else np.float32)
    if not (data.dtype.kind in "iu" or data.dtype in (np.float32, np.float64)):
        raise VolumeWriteError(f"{path}: cannot write voxels of type {data.dtype}; give whole numbers, float32 or float64")
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)

    def write(temporary: Path) -> None:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=split_extension(path)[1] != ".nii")
        except RuntimeError as error:
            raise VolumeWriteError(f"{path}: could not be written ({itk_reason(error)}); nothing was changed") from error
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(temporary))
        try:
            check_file(temporary)
            reader.ReadImageInformation()
            whole = reader.GetSize() == image.GetSize()
            reason = f"it reads back as size {reader.GetSize()}, not {image.GetSize()}"
        except (VolumeReadError, RuntimeError) as error:
            whole, reason = False, str(error).replace(f"{temporary}: ", "")
        if not whole:
            raise VolumeWriteError(
                f"{path}: the file written does not read back whole ({reason}); is the disk full? "
                f"Nothing was changed: free some space in {path.parent} and write it again."
            )

    return write


def write_sidecar(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON next to the volume ``path`` (``mask.nii.gz`` -> ``mask.json``), atomically.

    Returns the sidecar's path; raises :class:`VolumeWriteError` when it cannot be written.
    """
    sidecar, write = _sidecar_writer(Path(path).expanduser(), record)
    atomic_write(sidecar, write)
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON sidecar of the volume ``path`` goes: ``mask.json`` beside ``mask.nii.gz``."""
    path = Path(path).expanduser()
    return path.with_name(split_extension(path)[0] + ".json")


def _sidecar_writer(path: Path, record: dict[str, Any]) -> tuple[Path, Callable[[Path], None]]:
    """The sidecar's path for the volume ``path``, and a function that writes ``record`` to a temporary file."""
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    return sidecar_path(path), lambda temporary: temporary.write_text(text, encoding="utf-8")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` for a temporary file next to ``path``, flush it, then rename it over ``path``.

    An interrupted or failed write leaves no partial file and keeps any file that
    was there (with its permissions).  A failure of ``write`` (a full disk makes
    torch and safetensors raise their own errors) becomes :class:`VolumeWriteError`;
    an interrupt (``KeyboardInterrupt``) propagates after the temporary file is removed.
    """
    atomic_write_all({path: write})


def atomic_write_all(writes: dict[Path, Callable[[Path], None]]) -> None:
    """:func:`atomic_write` for several files at once: all are written and flushed before any is renamed.

    Temporary files are named ``.NAME.<process id>-<random>.partial.EXT`` (``NAME``
    cut short where the whole would pass :data:`NAME_MAX` bytes); those a process killed
    before it could remove them (SIGKILL, power loss) are removed by the next write of
    the same file.
    """
    if not writes:
        return
    temporaries: dict[Path, Path] = {}
    renamed: list[str] = []
    path = next(iter(writes))
    try:
        for path, write in writes.items():
            _remove_stale_partials(path)
            prefix, suffix = _partial_name(path)
            handle, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=suffix, dir=path.parent)
            os.close(handle)
            temporaries[path] = Path(name)
            write(temporaries[path])
            with open(temporaries[path], "rb") as written:
                os.fsync(written.fileno())
            os.chmod(temporaries[path], path.stat().st_mode & 0o777 if path.exists() else 0o644)
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
            renamed.append(str(path))
            _fsync_folder(path.parent)
    except VolumeWriteError:
        raise
    except Exception as error:  # OSError, or what a library's writer makes of one (torch, safetensors)
        done = f"only {', '.join(renamed)} replaced" if renamed else "nothing was changed"
        reason = str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        raise VolumeWriteError(
            f"{path}: could not be written ({reason}); {done}. Check that the disk has space and the folder is writable."
        ) from error
    finally:
        for temporary in temporaries.values():
            if temporary.exists():
                temporary.unlink()


def _partial_name(path: Path) -> tuple[str, str]:
    """The start (``.NAME.``) and end (``.partial.EXT``) of the names of ``path``'s temporary files, ``NAME``
    cut short so that a whole name fits in :data:`NAME_MAX` bytes."""
    suffix = f".partial{split_extension(path)[1]}"
    name, budget = path.name, NAME_MAX - _TEMPORARY_MARKS - len(os.fsencode(suffix))
    while len(os.fsencode(name)) > budget:
        name = name[:-1]
    return f".{name}.", suffix


def _remove_stale_partials(path: Path) -> None:
    """Remove temporary files of ``path`` left by a process that no longer runs."""
    prefix, suffix = _partial_name(path)
    pattern = re.compile(re.escape(prefix) + r"(?:(\d+)-)?[^.]*" + re.escape(suffix))
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and not (match.group(1) and _running(int(match.group(1)))):
            entry.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """True when a process ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
