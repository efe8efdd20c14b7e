"""Structure names per label value: typed in the widget, kept in a Labels layer's features.

A Labels layer's ``features`` table has an ``index`` column (the label value) and
a ``name`` column; napari shows both in the status bar under the cursor, and the
export writes them to the sidecar.
"""

from __future__ import annotations

import re
from typing import Any

_ENTRY = re.compile(r"^(?:(\d+)\s*[:=]\s*)?(.+)$")


def parse_names(text: str) -> dict[int, str]:
    """Names by label value from ``"liver, spleen"`` (labels 1, 2, ...) or ``"1: liver, 3=kidney"``.

    Entries without a value take the value after the previous entry's.  Raises
    ``ValueError`` naming the problem for a value of 0 or a value given twice.
    """
    names: dict[int, str] = {}
    value = 0
    for entry in filter(None, (part.strip() for part in text.split(","))):
        match = _ENTRY.match(entry)
        assert match is not None  # the pattern matches any non-empty text
        value = int(match.group(1)) if match.group(1) else value + 1
        if value == 0:
            raise ValueError(f"'{entry}': label 0 is the background; structures are 1, 2, ...")
        if value in names:
            raise ValueError(f"'{entry}': label {value} is named twice")
        names[value] = match.group(2).strip()
    return names


def format_names(names: dict[int, str]) -> str:
    """The text :func:`parse_names` reads back into ``names``."""
    return ", ".join(f"{value}: {name}" for value, name in sorted(names.items()))


def names_features(names: dict[int, str]) -> dict[str, list[Any]]:
    """A Labels layer ``features`` table for ``names``: columns ``index`` and ``name``."""
    values = sorted(names)
    return {"index": values, "name": [names[v] for v in values]}


def layer_names(features: Any) -> dict[int, str]:
    """Names by label value from a Labels layer's ``features`` (empty without ``index``/``name``)."""
    if "index" not in features or "name" not in features:
        return {}
    return {int(value): str(name) for value, name in zip(features["index"], features["name"])}
