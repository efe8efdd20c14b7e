"""One segmentation, stage by stage, and what it returns.

:meth:`~napari_fewshot.core.engine.FewShotSession.segment` makes a
:class:`SegmentationRun` and calls its stages in order: :meth:`~SegmentationRun.resolve`
the options for the call and the painting, :meth:`~SegmentationRun.plan`,
:meth:`~SegmentationRun.encode_painted` (and calibrate the decoder, build the rules),
:meth:`~SegmentationRun.predict` each structure, :meth:`~SegmentationRun.apply_rules` to each (and
merge them), and package the :class:`Segmentation`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .cancel import CancelCheck
from .confidence import SliceToCheck, slice_confidence, slices_to_check, structure_presence
from .encoding import Encoding
from .inputs import checked_absent, checked_labels, checked_slices
from .options import CallOptions, SegmentOptions, resolve
from .outward import OUTWARD_MARGIN_MM, expected_reach, planned_range, walk_outward
from .plan import SlicePlan
from .postprocess import REGROWTH_MM
from .prediction import Predictor, claim
from .priors import apply_distance_decay, apply_location_prior
from .progress import Progress, RunProgress
from .rules import DecoderBoundaries, FollowAnatomy, Structure, build_pipeline
from .runtime import Runtime
from .support import SupportWarning, as_painted, limits, painted_structures

if TYPE_CHECKING:
    from .engine import FewShotSession, Preview


@dataclass
class Segmentation:
    """What :func:`segment` returns; every volume has the input image's shape and axis order.

    labels : the predicted label values (those of the support; 0 = background), with
        the support labels' dtype; painted slices hold exactly what was painted.
    probabilities : per label value, float32 foreground probability in [0, 1].
    attention : per label value, float32 cosine similarity in [-1, 1] of each voxel's
        features to the structure's foreground prototypes.
    support_slices : per label value, the painted slice indices (along ``axis``) used.
    absent_slices : per label value, the slice indices (along ``axis``) it was marked absent on.
    boundaries : per label value, who drew its boundaries: ``prototype``, ``decoder``,
        or, when some painted slices trust the decoder and some do not, which drew near
        which painted slices (asked for the decoder, the slices near a painting it
        cannot redraw keep the prototype boundaries).
    presence : per label value, ``[n_slices]`` float64 in [0, 1] along ``axis``: how much
        what is predicted on each slice resembles the structure's prototypes, on the
        scale its painted slice sets (:func:`~napari_fewshot.core.confidence.structure_presence`;
        0 where nothing is predicted, 1 on a slice as painted).
    weights : the model file whose trained weights were used, or ``none``.
    runtime : what ran the encoder: backend, precision, device (torch after a fallback from OpenVINO).
    feature_bytes : memory held by the features of the volume(s) segmented.
    examined : per label value, the slice indices (along ``axis``) the structure was predicted
        on; the others were never looked at for it (see ``SegmentOptions.every_slice``) and hold 0.
    encoded_slices : how many slices this call encoded (0 when every one was cached).
    options : the options the call ran with, each left None resolved (:func:`~napari_fewshot.core.options.resolve`).
    axis : the axis of the volumes the slices are taken along.
    seconds : wall time of ``encode`` (0 when the features were cached), the rest (``head``,
        with the boundaries drawn) and ``total``.
    """

    labels: np.ndarray
    probabilities: dict[int, np.ndarray]
    attention: dict[int, np.ndarray]
    support_slices: dict[int, tuple[int, ...]]
    absent_slices: dict[int, tuple[int, ...]]
    boundaries: dict[int, str]
    presence: dict[int, np.ndarray]
    encoder: str
    head: str
    weights: str
    device: str
    runtime: Runtime
    feature_bytes: int
    examined: dict[int, np.ndarray]
    encoded_slices: int
    options: SegmentOptions
    axis: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def slices_to_check(self, count: int = 10) -> list[SliceToCheck]:
        """The slices most worth a look, and for which structure
        (:func:`~napari_fewshot.core.confidence.slices_to_check`): a structure counts on the slices it was neither
        painted on nor marked absent on."""
        n = self.labels.shape[self.axis]
        sure = slice_confidence(self.probabilities.values(), self.axis)
        labels = np.moveaxis(self.labels, self.axis, 0).reshape(n, -1)
        areas = {value: (labels == value).sum(axis=1) for value in self.presence}
        known = {v: (*slices, *self.absent_slices.get(v, ())) for v, slices in self.support_slices.items()}
        return slices_to_check(sure, self.presence, areas, known, count)



class SegmentationRun:
    """One segmentation of ``session``'s scan from a painting on ``support``'s, stage by stage
    (:meth:`~napari_fewshot.core.engine.FewShotSession.segment` calls them in order)."""

    def __init__(self, session: FewShotSession, support: FewShotSession, progress: Progress | None,
                 preview: Preview | None, cancel: CancelCheck | None) -> None:
        self.session, self.support, self.preview, self.cancel = session, support, preview, cancel
        self.same_volume = support is session
        self.clock = RunProgress(progress)
        rate = session.store.seconds_per_slice(session.trunk)
        if rate is not None:
            self.clock.assume("encode", rate)
        self.encoding = Encoding(session.trunk, session.store, session.batch_size, self.clock.advance("encode"),
                                 cancel)
        sessions = [session] if self.same_volume else [session, support]
        self.features = [s.features for s in sessions]  # the image's, then the support's when another
        self.predictor = Predictor(session.model, session.runtime.device, session.aspect, support,
                                   session.build_support)
        self.examined: dict[int, np.ndarray] = {}
        self.drawn_by: dict[int, str] = {}

    def resolve(self, support_labels: np.ndarray, options: SegmentOptions, slices: Sequence[int] | None,
                absent: Mapping[int, Iterable[int]] | None = None) -> None:
        """The options for this call, the painting ``[Z, Y, X]`` (slices first), its structures, the slices each
        is marked ``absent`` on and the slices each may be on (its limits)."""
        session = self.session
        self.queries = checked_slices(slices, session.shape, session.axis)
        self.call: CallOptions = resolve(options, same_volume=self.same_volume,
                                         whole=len(self.queries) == session.shape[session.axis],
                                         decoder_refused=session.decoder_refused)
        labels = checked_labels(support_labels, self.support.shape, self.same_volume)
        self.painting = np.moveaxis(labels, session.axis, 0)
        self.support_slices = painted_structures(self.painting)
        n = session.shape[session.axis]
        self.absent = checked_absent(absent, self.support_slices, n, self.same_volume)
        self.limits = {v: limits(slices, self.absent.get(v, ()), n) for v, slices in self.support_slices.items()}
        modality, support_modality = session.preprocessing.modality, self.support.preprocessing.modality
        if modality != support_modality:
            warnings.warn(
                f"the image looks like {modality} and the support image like {support_modality}: a structure is "
                "matched by its look, which differs between modalities. Paint the support on a scan of the image's "
                "modality (or give modality= if the guess is wrong)",
                SupportWarning, stacklevel=4,
            )

    def plan(self) -> None:
        """What the run expects to encode and predict, and the rules that need setting up before it predicts."""
        session, chosen = self.session, self.call.options
        spacing_mm = session.spacing_mm
        self.margin = math.ceil(OUTWARD_MARGIN_MM / spacing_mm[0])
        self.within = max(1, round(REGROWTH_MM / spacing_mm[0]))  # slices back a structure's regrowth is measured from
        self.reach = {v: expected_reach(_largest_painting_mm2(self.painting == v, slices, spacing_mm), spacing_mm[0])
                      for v, slices in self.support_slices.items()}
        self.support_needed = np.array(sorted({z for slices in self.support_slices.values() for z in slices}))
        outward = self.call.outward
        self.slice_plan = SlicePlan(
            self.clock, self.features[0], self.support_needed if self.same_volume else self.support_needed[:0],
            {v: np.arange(*planned_range(self.limits[v], slices, self.reach[v], self.margin)) if outward
             else self.queries for v, slices in self.support_slices.items()},
            spare=2 * self.margin if outward else 0, follow=chosen.follow_anatomy)
        self.decoder = session.store.decoder(session.trunk.runtime) if chosen.boundaries == "decoder" else None
        self.follow = None
        if chosen.follow_anatomy:
            self.follow = FollowAnatomy(session.volume, spacing_mm, session.preprocessing, session.window, self.clock,
                                        self.cancel)
            self.follow.sample(self.painting, self.support_slices)

    def encode_painted(self) -> None:
        """Encode the painted slices first (they calibrate the decoder), then what they tell: presence's
        levels and the decoder's calibration per structure."""
        self.encoding(self.support, self.features[-1], self.support_needed)
        session, n_query = self.session, len(self.session.volume)
        self.levels, calibrations = self.predictor.painted_maps(
            self.features[-1].tensor, self.painting, self.support_slices, n_query, self.call.options.threshold,
            self.decoder, self.clock)
        boundaries = None
        if self.decoder is not None:
            boundaries = DecoderBoundaries(self.decoder, calibrations, features=self.features[0],
                                           painted_fixed=self.same_volume,
                                           n_support=len(self.support.volume), aspect=session.aspect,
                                           clock=self.clock, cancel=self.cancel)
            self.slice_plan.draw({v for v in self.support_slices if boundaries.draws(v)})
        self.pipeline = build_pipeline(self.call, within=self.within, spacing_mm=session.spacing_mm,
                                       image=session.volume, window=session.window, decoder=boundaries,
                                       follow=self.follow)

    def predict(self) -> None:
        """Each structure's probability and attention, from its painted slices outward or on the slices asked."""
        shape, chosen = self.session.volume.shape, self.call.options
        self.probabilities = {v: np.zeros(shape, dtype=np.float32) for v in self.support_slices}
        self.attention = {v: np.zeros(shape, dtype=np.float32) for v in self.support_slices}
        batch_size = self.session.batch_size or self.session.trunk.batch_size()
        for value, slices in self.support_slices.items():
            if self.call.outward:
                self.examined[value] = walk_outward(
                    lambda batch, v=value: self._predict(v, batch), self.probabilities[value], self.painting == value,
                    slices, chosen.threshold, self.pipeline.kept, self.margin, batch_size,
                    reach=self.reach[value], plan=lambda a, b, v=value: self.slice_plan.expect(v, a, b),
                    limits=self.limits[value])
            else:
                for start in range(0, len(self.queries), batch_size):
                    self._predict(value, self.queries[start : start + batch_size])
                self.examined[value] = np.isin(np.arange(shape[0]), self.queries)
            self.slice_plan.walked(value, self.examined[value], self.probabilities[value], chosen.threshold)

    def _predict(self, value: int, batch: np.ndarray) -> None:
        """Encode the slices ``batch`` (those not cached) and predict structure ``value`` there, priors applied."""
        session, chosen = self.session, self.call.options
        self.encoding(session, self.features[0], batch)
        probability, slices, spacing_mm = self.probabilities[value], self.support_slices[value], session.spacing_mm
        painted = self.painting == value
        self.predictor.structure_maps(self.features[0].tensor, self.features[-1].tensor, painted, slices, batch,
                                      (probability, self.attention[value]), advance=self.clock.advance("head"),
                                      cancel=self.cancel)
        if chosen.location:
            apply_location_prior(probability, painted, slices, spacing_mm, batch)
        if chosen.decay_mm is not None:
            apply_distance_decay(probability, slices, spacing_mm[0], chosen.decay_mm, batch)
        if self.same_volume:
            probability[list(slices)] = self.painting[list(slices)] == value
            first, last = self.limits[value]
            probability[batch[(batch < first) | (batch > last) | np.isin(batch, self.absent.get(value, ()))]] = 0
        if self.preview is not None:
            self.preview(value, batch, np.moveaxis(probability[batch] > chosen.threshold, 0, session.axis))

    def apply_rules(self) -> np.ndarray:
        """The label map ``[Z, Y, X]``: each structure through the rules from its own probability above the
        threshold, as if it were painted alone; where structures overlap, the most probable
        (:func:`~napari_fewshot.core.prediction.claim`); each structure's painted slices as painted
        (:func:`~napari_fewshot.core.support.as_painted`)."""
        shape, dtype, threshold = self.session.volume.shape, self.painting.dtype, self.call.options.threshold
        labels, best = np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=np.float32)
        for value, slices in self.support_slices.items():  # one structure at a time: a mask's memory, not all
            probability = self.probabilities[value]
            alone = np.where(probability > threshold, value, 0).astype(dtype)
            if self.same_volume:  # a painting on another grid says nothing of this one's slices
                as_painted(alone, self.painting, {value: slices})
            structure = Structure(value, self.painting == value, slices, self.absent.get(value, ()))
            self.pipeline.apply(alone, structure)
            self.drawn_by[value] = structure.drawn_by
            claim(labels, best, value, alone == value, probability)
        self.clock.plan(draw=self.clock.finished["draw"], follow=self.clock.finished["follow"])  # estimates no more
        if self.same_volume:
            as_painted(labels, self.painting, self.support_slices)
        return labels

    def result(self, labels: np.ndarray, started: float) -> Segmentation:
        """What the run made, every volume back in the image's axis order."""
        session, axis = self.session, self.session.axis
        presence = {v: structure_presence(self.attention[v], labels == v, self.levels[v]) for v in self.support_slices}
        finished, encoded = time.perf_counter(), self.encoding.seconds
        return Segmentation(
            labels=np.moveaxis(labels, 0, axis),
            probabilities={v: np.moveaxis(p, 0, axis) for v, p in self.probabilities.items()},
            attention={v: np.moveaxis(a, 0, axis) for v, a in self.attention.items()},
            support_slices=self.support_slices,
            absent_slices=self.absent,
            boundaries=self.drawn_by,
            presence=presence,
            encoder=session.encoder,
            head=session.head,
            weights=session.weights,
            device=str(session.runtime.device),
            runtime=session.trunk.runtime,
            feature_bytes=sum(f.nbytes for f in self.features),
            examined={v: np.flatnonzero(flags) for v, flags in self.examined.items()},
            encoded_slices=self.encoding.slices,
            options=self.call.options,
            axis=axis,
            seconds={"encode": encoded, "head": finished - started - encoded, "total": finished - started},
        )


def _largest_painting_mm2(painted: np.ndarray, slices: tuple[int, ...], spacing_mm: tuple[float, float, float]) -> float:
    """The area (mm²) of the largest painting ``painted`` ``[Z, Y, X]`` bool holds on its painted ``slices``."""
    pixels = painted[list(slices)].reshape(len(slices), -1).sum(axis=1).max()
    return float(pixels) * spacing_mm[1] * spacing_mm[2]
