"""The user's cache folder, where converted models (and other derived files) are kept between sessions."""

from __future__ import annotations

import os
from pathlib import Path

#: Names a folder that replaces the platform's cache folder (``~/.cache/napari-fewshot`` on Linux).
CACHE_ENV = "NAPARI_FEWSHOT_CACHE"


def user_cache_folder(*parts: str) -> Path:
    """``parts`` inside napari-fewshot's cache folder: ``$NAPARI_FEWSHOT_CACHE`` when set, else the platform's
    user cache folder (platformdirs; on Linux ``$XDG_CACHE_HOME/napari-fewshot``).  Not created here."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).joinpath(*parts)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-fewshot", appauthor=False)).joinpath(*parts)
