"""How a segmentation turns the head's maps into labels: every option declared once, checked when it is made.

:class:`SegmentOptions` is built once by each caller (the widget, the command line,
a benchmark's method) and handed to :func:`~napari_fewshot.core.engine.segment`.
Each of its fields carries an :class:`Option`: the help that the command line's
``--help``, the options reference and this class's docstring show, the check of its
value, the flag of ``napari-fewshot segment``, the method flag of ``evaluate`` and,
where the widget shows it, its label and tooltip; those doors are generated from it.
What can be checked without the images is checked when the value is made; what
depends on the call (a support painted on another volume, some slices only, an
encoder whose embeddings the decoder cannot read) is settled by :func:`resolve`,
which turns every option left None into what it is for this call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from numbers import Real
from typing import Any

import numpy as np

from .boundaries import BOUNDARIES
from .errors import SegmentationError
from .follow import FOLLOW_NEAR_MM
from .outward import OUTWARD_MARGIN_MM
from .postprocess import GROWTH, KEEP, LIKE_FRACTION, REGROWTH_MM
from .priors import DECAY_MM

#: A voxel is background unless some structure's probability exceeds this.
DEFAULT_THRESHOLD = 0.5
#: What an option left None means, in its help.
WHERE_POSSIBLE = "where possible: the painting on the image itself, every slice predicted"


@dataclass(frozen=True)
class Option:
    """What every door needs of one :class:`SegmentOptions` field.

    help : what it does and what its default means (the command line's help, the reference, the docstring).
    check : ``check(value) -> None`` or the words that refuse a value (not asked for None).
    flag : the command line's flag (default ``--`` and the field's name with hyphens).
    metavar : the command line's name for its value.
    choices : the values it takes, when a few names.
    label, tooltip : the widget's control, when the widget shows the option (tooltip default: help).
    method_flag : ``evaluate``'s ``+FLAG`` in an engine method's name, which sets the option to
        ``method_value``; ending in ``=``, the flag takes the value itself (``+threshold=0.4``).
    method_choices : each of ``choices`` is a method flag that sets the option to it.
    """

    help: str
    check: Callable[[Any], str | None] | None = None
    flag: str = ""
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    label: str = ""
    tooltip: str = ""
    method_flag: str = ""
    method_value: Any = None
    method_choices: bool = False

    def parse(self, name: str, text: str) -> Any:
        """The value of option ``name`` written as ``text`` (a number, of the field's type), or ``ValueError``
        with why it is refused."""
        kind = int if option_field(name).type.startswith("int") else float
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        refusal = self.refusal(name, value)
        if refusal is not None:
            raise ValueError(refusal)
        return value

    def refusal(self, name: str, value: Any) -> str | None:
        """Why ``value`` is refused for the option ``name`` (its type, then its check), or None."""
        if value is None:
            return None
        kind = option_field(name).type.split(" |")[0]
        if kind == "bool" and not isinstance(value, (bool, np.bool_)):
            return f"{name} must be True or False; got {value!r}"
        if kind == "float" and (isinstance(value, (bool, np.bool_)) or not isinstance(value, Real)):
            return f"{name} must be a number; got {value!r}"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {', '.join(self.choices)}; got '{value}'"
        return None if self.check is None else self.check(value)


def option(default: Any, **spec: Any) -> Any:
    """A :class:`SegmentOptions` field with ``default`` and its :class:`Option`."""
    return field(default=default, metadata={"option": Option(**spec)})


def where_possible(method_flag: str, help: str, **spec: Any) -> Any:
    """A yes/no :class:`SegmentOptions` field left None: on where possible; ``evaluate``'s ``+method_flag`` switches
    it off."""
    return option(None, method_flag=method_flag, method_value=False, help=f"{help} (default: on {WHERE_POSSIBLE})",
                  **spec)


def _probability(value: float) -> str | None:
    # 0 would take every voxel, 1 none but the painted ones; NaN fails too
    return None if 0.0 < value < 1.0 else f"threshold must be a probability between 0 and 1 (exclusive); got {value}"


def _length_mm(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"decay_mm must be a length in mm above 0; got {value}"


@dataclass(frozen=True)
class SegmentOptions:
    threshold: float = option(
        DEFAULT_THRESHOLD, check=_probability, metavar="P", method_flag="threshold=",
        help="a voxel is background unless some structure's probability exceeds this (between 0 and 1, "
        f"exclusive); otherwise it takes the most probable structure (default {DEFAULT_THRESHOLD})")
    keep: str | None = option(
        None, choices=KEEP, label="Keep",
        tooltip="Which 3D parts of each structure stay: those touching the painting, the largest, or all",
        help="which 3D connected components of each structure stay: all, the largest, or those touching what was "
        f"painted (default: painted {WHERE_POSSIBLE}; else all)")
    location: bool | None = where_possible(
        "nolocation", flag="--location-prior",
        help="scale each slice's probabilities by an in-plane prior around the painting of its support slice, "
        "widening with their distance in mm")
    decay_mm: float | None = option(
        None, check=_length_mm, metavar="MM", method_flag="decay", method_value=DECAY_MM,
        help="scale each slice's probabilities by exp(-d / decay_mm), d its distance in mm to the nearest painted "
        f"slice (default: no decay; evaluate's +decay: {DECAY_MM:g} mm)")
    ends: bool | None = where_possible(
        "noends",
        help="stop each structure past its outermost painted slices where it ends: at the first empty slice, or "
        f"where its area grows to more than {GROWTH:g} times the narrowest of the slices within {REGROWTH_MM:g} mm "
        "before it that are smaller than the painted one")
    intensity_ends: bool | None = where_possible(
        "nointensity",
        help="stop each structure past its outermost painted slices at the first slice where fewer than "
        f"{LIKE_FRACTION:.0%} of its pixels have the painting's intensities")
    boundaries: str | None = option(
        None, choices=BOUNDARIES, method_choices=True, label="Boundaries",
        tooltip="Who draws each slice's boundary: LiteMedSAM's decoder where the prototypes found the structure "
        "(sharper; about 0.15 s more per slice on a CPU; needs the litemedsam encoder), or the prototype head "
        "(faster, coarser)",
        help="who draws each slice's boundary: decoder (LiteMedSAM's decoder, prompted by the prototypes' box) or "
        "prototype (the head's own mask) (default: the decoder where it can: the litemedsam encoder with its "
        "pretrained trunk)")
    fill_holes: bool = option(
        False, label="Fill holes", method_flag="fill", method_value=True,
        tooltip="Fill holes inside each structure on every slice (off: a ring-shaped structure keeps its hole)",
        help="fill the holes of each structure in every slice")
    every_slice: bool = option(
        False, label="Every slice", method_flag="every", method_value=True,
        tooltip="Segment volume encodes and predicts every slice. Unticked (faster), each structure is followed "
        f"from its painted slices outward until it ends, and {OUTWARD_MARGIN_MM:g} mm beyond; slices never "
        "reached stay empty",
        help="encode and predict every slice (default: from the painted slices outward until each structure has "
        f"ended, and {OUTWARD_MARGIN_MM:g} mm beyond; the slices never reached are 0)")
    hold_between: bool | None = where_possible(
        "nobetween",
        help="with several painted slices, keep each structure near the shape interpolated between neighbouring "
        "paintings; a slice there left empty takes that shape (with follow_anatomy, only where the carried mask "
        "vanishes)")
    hold_past: bool | None = where_possible(
        "nopast",
        help="with several painted slices, stop each structure past an outermost painted slice where it narrows "
        "(painted smaller than its painted neighbour) once its narrowing would have ended it, and at least one gap "
        "between paintings past it")
    follow_anatomy: bool | None = where_possible(
        "nofollow", label="Follow anatomy",
        tooltip="Segment volume carries the painting from slice to slice by registration, which draws each slice's "
        "boundary: as carried between painted slices and near them, further out inside what the prototypes "
        "found (off: the prototypes' or the decoder's boundary alone)",
        help="draw each slice's boundary by carrying the painting from slice to slice with deformable "
        "registration, inside the structure the prototypes find grown by a pixel (as carried between painted "
        f"slices and within {FOLLOW_NEAR_MM:g} mm past them; a slice where the two do not meet is left empty)")

    def __post_init__(self) -> None:
        for name, spec in option_fields():
            refusal = spec.refusal(name, getattr(self, name))
            if refusal is not None:
                raise SegmentationError(refusal)


def option_fields() -> Iterator[tuple[str, Option]]:
    """Each :class:`SegmentOptions` field's name and :class:`Option`, in declaration order."""
    for item in fields(SegmentOptions):
        yield item.name, item.metadata["option"]


def option_field(name: str) -> Field:
    """The :class:`SegmentOptions` field ``name`` (its ``type`` is the annotation, as text)."""
    return next(item for item in fields(SegmentOptions) if item.name == name)


SegmentOptions.__doc__ = "How :func:`~napari_fewshot.core.engine.segment` turns the head's maps into labels.\n\n" + "\n".join(
    f"{name} : {spec.help}." for name, spec in option_fields()
)


@dataclass(frozen=True)
class CallOptions:
    """The options of one segmentation call, every None resolved (:func:`resolve`).

    same_volume : the support was painted on the image itself.  whole : every slice is
    predicted.  outward : each structure is predicted from its painted slices outward
    until it ends (:func:`~napari_fewshot.core.outward.walk_outward`), not on every slice.
    """

    options: SegmentOptions
    same_volume: bool
    whole: bool

    @property
    def outward(self) -> bool:
        chosen = self.options
        return self.same_volume and self.whole and chosen.keep == "painted" and not chosen.every_slice


def with_values(options: SegmentOptions | Mapping[str, Any] | None, values: Mapping[str, Any]) -> SegmentOptions:
    """``options`` with the fields named in ``values`` replaced, checked as :class:`SegmentOptions` checks them.

    ``options``: a :class:`SegmentOptions`, a mapping of its fields by name
    (``{"threshold": 0.4}``), or None (the defaults).  Unknown names are refused with the known ones.
    """
    if isinstance(options, Mapping):
        options, values = None, {**options, **values}
    elif options is not None and not isinstance(options, SegmentOptions):
        raise SegmentationError(f"options must be SegmentOptions(...) or a dict of its fields by name "
                                f"(e.g. {{'threshold': 0.4}}); got {type(options).__name__}")
    known = [f.name for f in fields(SegmentOptions)]
    unknown = [str(name) for name in values if name not in known]
    if unknown:
        raise SegmentationError(f"unknown option {', '.join(sorted(unknown))}; the options are {', '.join(known)}")
    return replace(options or SegmentOptions(), **values)


def resolve(options: SegmentOptions, *, same_volume: bool, whole: bool, decoder_refused: str | None) -> CallOptions:
    """``options`` for one call, each None made what it is where possible, or a clear error for what is not.

    same_volume : the support was painted on the image; whole : every slice is predicted;
    decoder_refused : why LiteMedSAM's decoder cannot draw the boundaries with this model
    (None when it can).
    """
    keep = options.keep or ("painted" if same_volume and whole else "all")
    if (keep != "all" and not whole) or (keep == "painted" and not same_volume):
        reason = "the painting is on another volume" if whole else "only some slices are predicted"
        choices = KEEP if same_volume and whole else KEEP[:2] if whole else KEEP[:1]
        raise SegmentationError(f"keep='{keep}' is not possible here ({reason}); choose one of {', '.join(choices)}")
    location = same_volume if options.location is None else options.location
    if location and not same_volume:
        raise SegmentationError("location=True needs the painting on the image itself; the support is another volume")
    if options.decay_mm is not None and not same_volume:
        raise SegmentationError(
            f"decay_mm={options.decay_mm} is not possible here: it needs the painting on the image itself"
        )
    on_this_image = {name: _where_possible(name, getattr(options, name), same_volume and whole)
                     for name in ("ends", "intensity_ends", "hold_between", "hold_past", "follow_anatomy")}
    resolved = replace(options, keep=keep, location=location, boundaries=_boundaries(options.boundaries, decoder_refused),
                       **on_this_image)
    return CallOptions(resolved, same_volume, whole)


def _where_possible(name: str, wanted: bool | None, possible: bool) -> bool:
    """Option ``name`` (True, False, or None: where ``possible``), refused where it is not possible."""
    if wanted and not possible:
        raise SegmentationError(
            f"{name}=True needs the painting on the image itself and every slice predicted; use {name}=False"
        )
    return possible if wanted is None else wanted


def _boundaries(boundaries: str | None, refused: str | None) -> str:
    """Who draws the boundaries, or a clear error when the decoder cannot (``refused`` says why)."""
    if boundaries is None:
        return "prototype" if refused else "decoder"
    if boundaries == "decoder" and refused:
        raise SegmentationError(
            f"boundaries='decoder' prompts LiteMedSAM's decoder with LiteMedSAM's own image embeddings, which {refused} "
            "does not make; use encoder='litemedsam' with its pretrained trunk, or boundaries='prototype'"
        )
    return boundaries
