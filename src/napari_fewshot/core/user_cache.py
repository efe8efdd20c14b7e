"""The user's cache folder, where converted models (and other derived files) are kept between sessions.

A cache only saves time: when its folder cannot hold a file (a file in its place,
no permission, a read-only or full disk), :func:`cache_writable` (asked before the
work) or :func:`save_in_cache` says so in one warning line, and the run goes on without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..io.errors import VolumeWriteError
from ..io.write import atomic_write, check_output_folder

log = logging.getLogger(__name__)

#: Names a folder that replaces the platform's cache folder (``~/.cache/napari-fewshot`` on Linux).
CACHE_ENV = "NAPARI_FEWSHOT_CACHE"

#: Cache folders (or files) this process found it cannot write: not tried again, not warned about again.
_unwritable: set[Path] = set()


def user_cache_folder(*parts: str) -> Path:
    """``parts`` inside napari-fewshot's cache folder: ``$NAPARI_FEWSHOT_CACHE`` when set, else the platform's
    user cache folder (platformdirs; on Linux ``$XDG_CACHE_HOME/napari-fewshot``).  Not created here."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).joinpath(*parts)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-fewshot", appauthor=False)).joinpath(*parts)


def cache_writable(path: Path, what: str, advice: str = "") -> bool:
    """Whether the cache file ``path`` can be saved: its folder can be made and written, and ``path`` is no folder.

    When it cannot (a file in the folder's place or on its way, no permission, a
    read-only disk, a folder at ``path``), one warning line per folder (or path) and
    process says ``what`` is not cached (``"features are not cached on disk"``), why,
    and ``advice`` (how to give another folder); later calls return False without a word.
    """
    if path.parent in _unwritable or path in _unwritable:
        return False
    try:
        check_output_folder(path.parent)
    except VolumeWriteError as error:
        not_cached(path.parent, what, str(error), advice)
        return False
    if path.is_dir():
        not_cached(path, what, f"{path} is a folder where a cache file goes; move it away", advice)
        return False
    return True


def save_in_cache(path: Path, write: Callable[[Path], None], what: str, advice: str = "") -> bool:
    """Save the cache file ``path`` with ``write(temporary)`` (:func:`~napari_fewshot.io.write.atomic_write`,
    its folder created); False, with :func:`cache_writable`'s warning, when the cache cannot hold it.

    A failed write (a full disk) leaves nothing half-written and keeps whatever was
    at ``path``; it is said once, and the folder is not written again by this process.
    """
    if not cache_writable(path, what, advice):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except (OSError, VolumeWriteError) as error:
        not_cached(path.parent, what, str(error), advice)
        return False
    return True


def not_cached(path: Path, what: str, reason: str, advice: str) -> None:
    """Say in one warning line that ``what`` is not cached, ``reason`` and ``advice``; ``path`` is not tried again."""
    _unwritable.add(path)
    log.warning("%s (the run goes on): %s%s", what, reason, f" ({advice})" if advice else "")
