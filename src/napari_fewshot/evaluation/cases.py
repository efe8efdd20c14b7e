"""Labelled volumes for benchmarks, and the task of segmenting one structure under one protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..io import check_same_grid, format_name, read_volume
from .protocols import THIRDS, TOGETHER, areas, at_fractions, extent, painted, support_slices

#: The label value list that stands for every structure of a label map that holds at least :data:`MIN_SLICES` slices.
ALL = "all"
#: The fewest slices a structure must hold to be among :data:`ALL`.
MIN_SLICES = 5


@dataclass
class Case:
    """One labelled volume: ``image`` and ``truth`` ``[Z, Y, X]`` (slices along Z), ``spacing`` in mm per axis."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    spacing: tuple[float, float, float]
    values: tuple[int, ...]
    names: dict[int, str] = field(default_factory=dict)

    def structure(self, value: int) -> str:
        return self.names.get(value, f"label {value}")


def read_case(folder: Path | str, values: list[int | str]) -> Case:
    """``folder/image.nii.gz`` and ``folder/label.nii.gz`` (any format the reader takes), ``labels.json`` for names.

    ``values``: the structures to test, as label values or as names that
    ``labels.json`` gives them, or ``all`` (:data:`ALL`): every structure of
    the label map that holds at least :data:`MIN_SLICES` slices.  Each must
    occur in the label map, which must lie on the image's grid.
    """
    folder = Path(folder)
    image = read_volume(_one(folder, "image"), kind="image")
    label = read_volume(_one(folder, "label"), kind="labels")
    check_same_grid(label, image)
    names = _names(folder / "labels.json")
    if [str(value).lower() for value in values] == [ALL]:
        wanted = _spanning(label.data, MIN_SLICES)
    else:
        wanted = [_label_value(folder, value, names) for value in values]
    missing = [v for v in wanted if not np.any(label.data == v)]
    if missing:
        raise ValueError(f"{folder}: label values {missing} do not occur in its label map")
    return Case(folder.name, image.data, label.data, tuple(image.geometry.spacing[::-1]), tuple(wanted), names)


def _names(path: Path) -> dict[int, str]:
    """The structure names by label value that the JSON file ``path`` gives (none without it), or ``ValueError``
    naming the file and what is wrong."""
    if not path.is_file():
        return {}
    example = 'write it as {"1": "liver", "2": "spleen"}'
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from None
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{path} is not valid JSON ({error}); {example}") from None
    if not isinstance(names, dict) or not all(k.strip().isdigit() and isinstance(v, str) for k, v in names.items()):
        held = "keys other than label values or names other than text" if isinstance(names, dict) else (
            f"a JSON {type(names).__name__}")
        raise ValueError(f"{path} must map label values to structure names, but holds {held}; {example}")
    return {int(k): v for k, v in names.items()}


def _spanning(label: np.ndarray, min_slices: int) -> list[int]:
    """The non-zero values of ``label`` ``[Z, Y, X]`` that occur on at least ``min_slices`` slices, ascending."""
    values = np.unique(label)
    return [int(v) for v in values[values != 0] if np.count_nonzero(areas(label == v)) >= min_slices]


def _label_value(folder: Path, value: int | str, names: dict[int, str]) -> int:
    """``value`` as a label value: a whole number, or a structure's name in ``labels.json``."""
    if isinstance(value, int) or value.lstrip("-").isdigit():
        return int(value)
    by_name = {name.lower(): number for number, name in names.items()}
    if value.lower() not in by_name:
        known = ", ".join(f"{name} ({number})" for number, name in sorted(names.items())) or "none: it has no labels.json"
        raise ValueError(f"{folder}: '{value}' is neither a label value nor a structure named in its labels.json "
                         f"(names: {known})")
    return by_name[value.lower()]


def _one(folder: Path, stem: str) -> Path:
    """The volume file ``folder/stem.*`` (NIfTI, NRRD, MetaImage; not e.g. a ``stem.json`` beside it), refused
    when there are several."""
    try:
        found = sorted(path for path in folder.glob(f"{stem}.*") if format_name(path))
    except OSError as error:  # a name too long for the file system, a folder that may not be read
        raise ValueError(f"{folder}: cannot be read ({error.strerror}); give the folder of a case") from None
    if not found:
        raise FileNotFoundError(f"{folder} has no {stem} file ({stem}.nii.gz, {stem}.nrrd, ...)")
    if len(found) > 1:
        raise ValueError(f"{folder} has {len(found)} {stem} files ({', '.join(path.name for path in found)}); "
                         f"keep the one to evaluate and move the others away")
    return found[0]


@dataclass
class Together:
    """Every structure of a case painted into one support, each on its own ``slices`` (per label value), and
    segmented in one run per method: ``runs``, per method name, what that run gave (filled by the method)."""

    slices: dict[int, tuple[int, ...]]
    runs: dict[str, Any] = field(default_factory=dict)

    def painting(self, case: Case) -> np.ndarray:
        """The support label volume: each structure's true mask on its slices, with its own label value."""
        support = np.zeros(case.truth.shape, dtype=np.uint8)
        for value, slices in self.slices.items():
            painted(case.truth == value, slices, value, support)
        return support


@dataclass
class Task:
    """Segment structure ``value`` of ``case`` from the slices a protocol paints.

    ``support_slices``: the painted slice indices, on ``case`` or, for the cross
    protocol, on ``support_case`` (one per third of the query's extent).  ``together``:
    for the protocols that paint every structure into one support, that support, shared by
    the case's tasks.
    """

    case: Case
    value: int
    protocol: str
    support_slices: tuple[int, ...]
    support_case: Case | None = None
    support_value: int | None = None
    together: Together | None = None

    @cached_property
    def truth(self) -> np.ndarray:
        """The structure's true mask ``[Z, Y, X]`` bool on ``case`` (computed once)."""
        return self.case.truth == self.value

    @cached_property
    def support_mask(self) -> np.ndarray:
        """The structure's true mask on the volume the support is painted on (computed once)."""
        source = self.support_case or self.case
        return source.truth == (self.support_value if self.support_case else self.value)

    def painting(self, slices: tuple[int, ...] | None = None) -> np.ndarray:
        """The support label volume (value 1 on the painted slices, or on ``slices`` of them)."""
        return painted(self.support_mask, self.support_slices if slices is None else slices)

    def scored(self) -> np.ndarray:
        """The slices scored: every slice, or the query's extent for the cross protocol."""
        if self.support_case is None:
            return np.arange(len(self.case.image))
        first, last = extent(self.truth)
        return np.arange(first, last + 1)


def tasks_for(case: Case, protocol: str, others: list[Case]) -> list[Task]:
    """The tasks of ``protocol`` on ``case``: one per structure; for ``cross``, one per other case holding a structure of that name."""
    if protocol in TOGETHER:
        together = Together({v: support_slices(case.truth == v, protocol) for v in case.values})
        return [Task(case, v, protocol, together.slices[v], together=together) for v in case.values]
    if protocol != "cross":
        return [Task(case, v, protocol, support_slices(case.truth == v, protocol)) for v in case.values]
    tasks = []
    for other in others:
        by_name = {other.structure(v): v for v in other.values}
        for value in case.values:
            if other is not case and case.structure(value) in by_name:
                support_value = by_name[case.structure(value)]
                slices = at_fractions(other.truth == support_value, THIRDS)
                tasks.append(Task(case, value, protocol, slices, other, support_value))
    return tasks
