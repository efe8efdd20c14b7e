"""napari's reader preference for scans: open NIfTI, NRRD and MetaImage files with this plugin, without a dialog.

napari asks which plugin should read a file when several say they can (its own
builtins claim these files too, and fail on them), and remembers an answer per
file pattern in its preferences (*Settings > Preferences > Plugins > File
extension readers*).  :func:`prefer_this_reader` sets that answer for every
pattern this plugin's reader declares, and for folders (``*/``: DICOM series,
which napari's builtins would read with imageio, without their geometry),
once, when the user asks.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import npe2
from napari.settings import get_settings

PLUGIN = "napari-fewshot"
#: napari matches a folder's path, ending in a separator, against the patterns
FOLDERS = "*/"


@cache
def reader_patterns() -> tuple[str, ...]:
    """The file name patterns this plugin's reader declares in its manifest (``*.nii.gz``, ...), and folders
    (the manifest is read once per process)."""
    manifest = npe2.PluginManifest.from_file(Path(__file__).resolve().parents[1] / "napari.yaml")
    return (*(pattern for reader in manifest.contributions.readers or () for pattern in reader.filename_patterns),
            FOLDERS)


def patterns_read_elsewhere() -> list[str]:
    """The patterns for which napari's preferences do not name this plugin (napari asks, or uses another)."""
    preferences = get_settings().plugins.extension2reader
    return [pattern for pattern in reader_patterns() if preferences.get(pattern) != PLUGIN]


def prefer_this_reader() -> list[str]:
    """Make this plugin napari's reader for its file patterns (kept in napari's preferences); returns those set."""
    settings = get_settings().plugins
    changed = patterns_read_elsewhere()
    if changed:
        settings.extension2reader = {**settings.extension2reader, **dict.fromkeys(changed, PLUGIN)}
    return changed
