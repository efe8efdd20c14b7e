"""What a segmentation does with the head's maps: one frozen value, checked when it is made.

:class:`SegmentOptions` is built once by each caller (the widget, the command line,
a benchmark's method) and handed to :func:`~napari_fewshot.core.engine.segment`.
What can be checked without the images is checked when the value is made; what
depends on the call (a support painted on another volume, some slices only, an
encoder whose embeddings the decoder cannot read) is settled by :func:`resolve`,
which turns every option left None into what it is for this call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .boundaries import BOUNDARIES
from .errors import SegmentationError
from .postprocess import KEEP

#: A voxel is background unless some structure's probability exceeds this.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SegmentOptions:
    """How :func:`~napari_fewshot.core.engine.segment` turns the head's maps into labels.

    threshold : a voxel is background unless some structure's probability exceeds it
        (0 to 1); otherwise it takes the most probable structure.
    keep : which 3D connected components of each structure stay: ``all``, the
        ``largest``, or those touching what was ``painted``.  None: ``painted`` where
        possible (support on the image, every slice predicted), else ``all``.
    location : scale each slice's probabilities by an in-plane prior around the painting
        of its support slice, widening with their distance in mm.  None: where possible.
    decay_mm : scale each slice's probabilities by ``exp(-d / decay_mm)``, ``d`` its
        distance in mm to the nearest painted slice (above 0).  None: no decay.
    ends : stop each structure past its outermost painted slices where it ends: at an empty slice, or
        where it widens again into a neighbour (:func:`~napari_fewshot.core.postprocess.stop_at_ends`).
        None: where possible.
    intensity_ends : stop each structure past its outermost painted slices at the first slice
        where it no longer has the painting's intensities
        (:func:`~napari_fewshot.core.postprocess.stop_where_unlike`).  Needs the painting on the
        image and every slice predicted.  None: where possible.
    boundaries : ``decoder`` (LiteMedSAM's decoder draws them, prompted by the prototypes'
        boxes) or ``prototype`` (the head's own mask).  None: the decoder where it can.
    fill_holes : fill the holes of each structure in every slice.
    every_slice : encode and predict every slice, not only from the painted slices
        outward to where each structure ends.
    hold_between : with several painted slices, keep each structure near the shape
        interpolated between neighbouring paintings; a slice there left empty takes that
        shape (:func:`~napari_fewshot.core.between.hold_between`).  With
        ``follow_anatomy`` the slices between paintings then take the carried mask, so this
        acts only where the carried mask vanishes.  Needs the painting on the image and
        every slice predicted.  None: where possible (one painted slice: no change).
    hold_past : with several painted slices, stop each structure at most one gap between
        paintings past the outermost painted slice
        (:func:`~napari_fewshot.core.between.hold_past`).  Needs and defaults as
        ``hold_between``.
    follow_anatomy : draw each structure's boundary on every slice by carrying its painting
        from slice to slice with deformable registration, inside the engine's mask grown by
        a pixel; a slice where the two do not meet is left empty.  Between the outermost
        painted slices, and within 6 mm past them, the carried mask is not bounded
        (:mod:`~napari_fewshot.core.follow`).  Needs the painting on the image and every
        slice predicted.  None: where possible.
    """

    threshold: float = DEFAULT_THRESHOLD
    keep: str | None = None
    location: bool | None = None
    decay_mm: float | None = None
    ends: bool | None = None
    intensity_ends: bool | None = None
    boundaries: str | None = None
    fill_holes: bool = False
    every_slice: bool = False
    hold_between: bool | None = None
    hold_past: bool | None = None
    follow_anatomy: bool | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            raise SegmentationError(f"threshold must be a probability between 0 and 1; got {self.threshold}")
        if self.keep is not None and self.keep not in KEEP:
            raise SegmentationError(f"keep must be one of {', '.join(KEEP)}; got '{self.keep}'")
        if self.decay_mm is not None and not (self.decay_mm > 0 and math.isfinite(self.decay_mm)):
            raise SegmentationError(f"decay_mm must be a length in mm above 0; got {self.decay_mm}")
        if self.boundaries is not None and self.boundaries not in BOUNDARIES:
            raise SegmentationError(f"boundaries must be one of {', '.join(BOUNDARIES)}; got '{self.boundaries}'")


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


def with_values(options: SegmentOptions | None, values: dict[str, Any]) -> SegmentOptions:
    """``options`` (default :class:`SegmentOptions`) with the fields named in ``values`` replaced."""
    unknown = set(values) - {f.name for f in fields(SegmentOptions)}
    if unknown:
        names = ", ".join(f.name for f in fields(SegmentOptions))
        raise SegmentationError(f"unknown option {', '.join(sorted(unknown))}; the options are {names}")
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
