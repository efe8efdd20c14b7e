"""What happens to each structure after the head has predicted it: an ordered pipeline of small rules.

A :class:`Rule` takes one structure's mask ``[Z, Y, X]`` bool and returns the mask it
keeps (a new array); the :class:`Pipeline` applies its rules in order to each
structure of the label map, writing each result back with
:func:`~napari_fewshot.core.postprocess.set_structure` (so a rule that grows a
structure claims only background, never another structure).  The pipeline is built
once per segmentation from its options (:func:`build_pipeline`), and the outward walk
(:func:`~napari_fewshot.core.outward.walk_outward`) asks the same pipeline's
:meth:`Pipeline.kept` whether a structure has ended, so a rule about where a
structure ends is written once.

The rules, in the order the pipeline runs them:

- :class:`DecoderBoundaries`: LiteMedSAM's decoder redraws each slice's boundary,
  near the painted slices it proved better on (after the clean-up below);
- :class:`HoldBetween`, :class:`HoldPast`: several paintings hold a structure between
  them and stop it past an outermost painting where it narrows;
- :class:`KeepComponents`, :class:`StopAtEnds`, :class:`FillHoles`: the clean-up;
- :class:`FollowAnatomy`: registration carries the painting from slice to slice and
  draws the boundary (then the clean-up again, without the ends);
- :class:`IntensityStop`: a structure ends where it loses the painting's intensities;
- :class:`KeepToLimits`: nothing of a structure where the user marked it absent, nor past that.

A new rule is one class here, a line in :func:`build_pipeline`, a field of
:class:`~napari_fewshot.core.options.SegmentOptions` that switches it, and its test.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .between import hold_between, hold_past
from .boundaries import BOUNDARIES, BoxCalibration, draw_boundaries
from .cancel import CancelCheck, check_cancel
from .features import VolumeFeatures
from .follow import FOLLOW_ITERATIONS, FOLLOW_MARGIN_MM, FOLLOW_MAX_SIDE, FOLLOW_NEAR_MM, follow_anatomy
from .options import CallOptions
from .postprocess import connected_to, fill_holes, largest_component, set_structure, stop_at_ends, stop_where_unlike
from .prediction import per_query
from .preprocess import Preprocessing
from .progress import RunProgress
from .registration import SliceRegistration
from .sam_decoder import BoxDecoder
from .support import limits


@dataclass
class Structure:
    """One structure as the rules see it.

    value : its label value.  painted : ``[Z, Y, X]`` bool, where it was painted (on the
    support's grid).  painted_slices : the slices it was painted on (indices along the
    first axis).  absent : the slices the user marked it absent on.
    drawn_by : who drew its boundaries (set by :class:`DecoderBoundaries`).
    """

    value: int
    painted: np.ndarray
    painted_slices: tuple[int, ...]
    absent: tuple[int, ...] = ()
    drawn_by: str = BOUNDARIES[0]


class Rule:
    """``rule(mask, structure) -> mask``: what one structure keeps (``[Z, Y, X]`` bool, a new array)."""

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class KeepComponents(Rule):
    """The 3D components kept: ``all``, the ``largest``, or those touching what was ``painted``."""

    keep: str

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        if self.keep == "largest":
            return largest_component(mask)
        if self.keep == "painted":
            return connected_to(mask, structure.painted)
        return mask.copy()


@dataclass(frozen=True)
class StopAtEnds(Rule):
    """Cut past the outermost painted slices where the structure ends
    (:func:`~napari_fewshot.core.postprocess.stop_at_ends`, a regrowth measured from ``within`` slices back)."""

    within: int

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        return stop_at_ends(mask, structure.painted_slices, self.within)


class FillHoles(Rule):
    """Fill the holes of the structure in every slice."""

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        return fill_holes(mask)


@dataclass(frozen=True)
class HoldBetween(Rule):
    """Keep the structure near the shape interpolated between neighbouring paintings
    (:func:`~napari_fewshot.core.between.hold_between`; ``spacing_mm`` per axis, slice axis first)."""

    spacing_mm: tuple[float, float, float]

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        return hold_between(mask, structure.painted, structure.painted_slices, self.spacing_mm)


class HoldPast(Rule):
    """Past an outermost painting where the structure narrows, stop it where its narrowing would have ended it,
    and no nearer than one gap between paintings (:func:`~napari_fewshot.core.between.hold_past`)."""

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        return hold_past(mask, structure.painted, structure.painted_slices)


class KeepToLimits(Rule):
    """Nothing of the structure on the slices it was marked absent on, nor past them
    (:func:`~napari_fewshot.core.support.limits`), whatever a rule before grew there."""

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        kept = mask.copy()
        first, last = limits(structure.painted_slices, structure.absent, len(mask))
        kept[:first] = kept[last + 1 :] = False
        kept[list(structure.absent)] = False
        return kept


@dataclass(frozen=True)
class IntensityStop(Rule):
    """End the structure past its outermost painted slices where it loses the painting's intensities
    (:func:`~napari_fewshot.core.postprocess.stop_where_unlike`).

    image : ``[Z, Y, X]`` the scan's intensities (file units); window : its intensity window (low, high).
    """

    image: np.ndarray
    window: tuple[float, float]

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        low, high = self.window
        return stop_where_unlike(mask, self.image, structure.painted, structure.painted_slices, high - low)


class DecoderBoundaries(Rule):
    """LiteMedSAM's decoder redraws the boundaries of the slices the prototypes keep (after the rules
    :meth:`after` names), for each structure some painted slice of which trusts it (its calibration).

    calibrations : per structure, :func:`~napari_fewshot.core.boundaries.calibrate`'s verdict on its painted
    slices; each slice follows the painted slice(s) it takes its support from, and, when the painting is on the
    image (``painted_fixed``), a structure's painted slices stay as painted.  features : the image's cached
    features (LiteMedSAM's embeddings
    ``[Z, 256, 64, 64]``, read when the rule runs); n_support : the support volume's slices; aspect : the
    image's pixel aspect.
    """

    def __init__(self, decoder: BoxDecoder, calibrations: dict[int, BoxCalibration], *, features: VolumeFeatures,
                 painted_fixed: bool, n_support: int, aspect: float, clock: RunProgress,
                 cancel: CancelCheck | None) -> None:
        self.decoder, self.calibrations, self.before = decoder, calibrations, ()
        self.features, self.painted_fixed, self.n_support, self.aspect = features, painted_fixed, n_support, aspect
        self.clock, self.cancel = clock, cancel

    def after(self, rules: Sequence[Rule]) -> DecoderBoundaries:
        """This rule, drawing each structure it draws from what ``rules`` (which only remove voxels) keep of it."""
        drawing = copy.copy(self)
        drawing.before = tuple(rules)
        return drawing

    def draws(self, value: int) -> bool:
        """Whether the decoder draws structure ``value``."""
        calibration = self.calibrations.get(value)
        return calibration is not None and bool(calibration.trusted.any())

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        if not self.draws(structure.value):
            return mask.copy()
        for rule in self.before:  # these only remove: what they keep is what the label map would hold
            mask = rule(mask, structure)
        calibration, slices, n_query = self.calibrations[structure.value], structure.painted_slices, len(mask)

        def spread(values: np.ndarray) -> np.ndarray:
            return per_query(values, n_query, self.n_support, slices)

        fixed = ~(spread(calibration.decoder_dice) > spread(calibration.prototype_dice))
        if self.painted_fixed:
            fixed[list(slices)] = True
        structure.drawn_by = _drawn_by(calibration.trusted, slices)
        return draw_boundaries(mask, self.features.tensor, self.decoder, spread(calibration.scales), self.aspect,
                               fixed=fixed, advance=self.clock.advance("draw"), cancel=self.cancel)


class FollowAnatomy(Rule):
    """Carry each painting from slice to slice by deformable registration, which draws the boundary
    (:func:`~napari_fewshot.core.follow.follow_anatomy`): as carried between the painted slices and within
    ``FOLLOW_NEAR_MM`` past them, further out inside the mask grown by a pixel."""

    def __init__(self, image: np.ndarray, spacing_mm: tuple[float, float, float], preprocessing: Preprocessing,
                 window: tuple[float, float], clock: RunProgress, cancel: CancelCheck | None) -> None:
        self.registration = SliceRegistration(image, spacing_mm[1:], preprocessing, window,
                                              iterations=FOLLOW_ITERATIONS, margin_mm=FOLLOW_MARGIN_MM,
                                              max_side=FOLLOW_MAX_SIDE)
        self.near = math.floor(FOLLOW_NEAR_MM / spacing_mm[0] + 1e-9)
        self.clock, self.cancel = clock, cancel

    def sample(self, painting: np.ndarray, structures: dict[int, tuple[int, ...]]) -> None:
        """Time one carry of the first structure's painting onto a neighbouring slice: the rule's rate before it
        runs, for the run's estimate (``painting`` ``[Z, Y, X]`` labels)."""
        value, (source, *_) = next(iter(structures.items()))
        if len(painting) > 1:
            started = time.perf_counter()
            self.registration(painting[source] == value, source,
                              source + 1 if source + 1 < len(painting) else source - 1)
            self.clock.sample("follow", time.perf_counter() - started, 1)

    def __call__(self, mask: np.ndarray, structure: Structure) -> np.ndarray:
        advance = self.clock.advance("follow")

        def carried(slices: int) -> None:
            advance(slices)
            check_cancel(self.cancel)

        return follow_anatomy(mask, structure.painted, structure.painted_slices, self.registration, near=self.near,
                              advance=carried)


class Pipeline:
    """``rules`` applied in order to each structure; ``walk``: those the outward walk asks where a structure ends."""

    def __init__(self, rules: Sequence[Rule], walk: Sequence[Rule]) -> None:
        self.rules, self.walk = tuple(rules), tuple(walk)

    def apply(self, labels: np.ndarray, structure: Structure) -> None:
        """Structure ``structure.value`` of ``labels`` ``[Z, Y, X]`` through every rule, in place."""
        for rule in self.rules:
            set_structure(labels, structure.value, rule(labels == structure.value, structure))

    def kept(self, mask: np.ndarray, painted: np.ndarray, painted_slices: tuple[int, ...]) -> np.ndarray:
        """What the walk's rules keep of ``mask`` ``[Z, Y, X]`` bool, a structure painted as ``painted`` on
        ``painted_slices`` (of this block of slices)."""
        structure = Structure(0, painted, painted_slices)
        for rule in self.walk:
            mask = rule(mask, structure)
        return mask


def build_pipeline(options: CallOptions, *, within: int, spacing_mm: tuple[float, float, float],
                   image: np.ndarray, window: tuple[float, float], decoder: DecoderBoundaries | None = None,
                   follow: FollowAnatomy | None = None) -> Pipeline:
    """The rules ``options`` ask for, in order (see the module).

    within : slices back a regrowth is measured from (:class:`StopAtEnds`); spacing_mm : the image's voxel
    size, slice axis first; image ``[Z, Y, X]`` and window: the scan's intensities and its window;
    decoder, follow: those rules, built by the caller with its run's state, when asked for.
    """
    chosen = options.options
    clean_up: list[Rule] = [KeepComponents(chosen.keep)]
    if chosen.ends:
        clean_up.append(StopAtEnds(within))
    fill: list[Rule] = [FillHoles()] if chosen.fill_holes else []
    rules: list[Rule] = [decoder.after(clean_up)] if decoder is not None else []
    if chosen.hold_between:
        rules.append(HoldBetween(spacing_mm))
    if chosen.hold_past:
        rules.append(HoldPast())
    rules += clean_up + fill
    if follow is not None:  # the slices registration left empty may cut parts off: the clean-up again, ends kept
        rules += [follow, KeepComponents(chosen.keep), *fill]
    if chosen.intensity_ends:
        rules.append(IntensityStop(image, window))
    return Pipeline([*rules, KeepToLimits()], walk=clean_up)


def _drawn_by(trusted: np.ndarray, painted: tuple[int, ...]) -> str:
    """``decoder``, ``prototype``, or which painted slices' neighbours each drew (``trusted`` ``[S]`` bool)."""
    if trusted.all() or not trusted.any():
        return BOUNDARIES[int(trusted.all())]
    near = {flag: ", ".join(str(z) for z, t in zip(painted, trusted) if t == flag) for flag in (True, False)}
    return f"decoder near painted slices {near[True]}; prototype near {near[False]}"
