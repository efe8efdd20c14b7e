"""The volume engine: segment every slice of a volume from the slices a user painted.

:func:`segment` is the one function behind the Python API, the command line and
the widget.  Arrays in (numpy, file units), arrays out; no napari or Qt here.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boundaries import BOUNDARIES, BoxCalibration, calibrate, draw_boundaries
from .cancel import CancelCheck, check_cancel
from .confidence import similarity_levels, structure_presence
from .encoders import Encoder, EncoderUnavailable, build_encoder
from .errors import SegmentationError
from .features import FeatureCache, VolumeFeatures, encode_slices, feature_key
from .heads import DEFAULT_HEAD, Head, build_head
from .model import DEFAULT, FewShotModel, apply_model_file, model_source, read_model
from .intensity import Modality
from .options import SegmentOptions
from .between import hold_structure
from .follow import follow_anatomy
from .outward import OUTWARD_MARGIN_MM, expected_reach, planned_range, walk_outward
from .postprocess import (
    KEEP, REGROWTH_MM, connected_to, largest_component, set_structure, stop_at_ends, stop_where_unlike,
)
from .postprocess import fill_holes as fill_slice_holes
from .preprocess import (
    Preprocessing, from_encoder_slices, intensity_window, slice_aspect, spacing_first, to_encoder_slices,
)
from .priors import apply_distance_decay, apply_location_prior
from .progress import Progress, RunProgress
from .registration import SliceRegistration
from .runtime import Runtime, Trunk, resolve_runtime, trunk_runner
from .sam_decoder import BoxDecoder, box_decoder
from .support import SupportWarning, assign_supports, painted_slices, painted_structures
from .user_cache import user_cache_folder

DEFAULT_ENCODER = "litemedsam"
#: Around a structure's mask, the mm of each slice that registration sees when it carries the boundary, and the
#: most pixels along a side it registers at full resolution (a wider box is binned to fit).
FOLLOW_MARGIN_MM, FOLLOW_MAX_SIDE = 20.0, 128
#: Within this many mm past the outermost painted slices the carried boundary is not bounded by the engine's mask.
FOLLOW_NEAR_MM = 6.0
#: Demons iterations per carried slice.  20 carry one step as well (``benchmarks/carry_steps.py``: Dice 0.857 against
#: 0.858, 7 ms a step against 16) but lose over a walk: the broad benchmark's mean drops 0.007 (one painted slice)
#: and 0.009 (three), ribs by up to 0.2.  With the field smoothed less (``registration.SMOOTHING``), 30, 50 and
#: 100 carry the paintings onto the slices between three of them at 0.795, 0.797 and 0.800 mean slice Dice.
FOLLOW_ITERATIONS = 50
#: A head batch holds at most this many support-to-query attention entries (Q * S * (h*w)^2).
HEAD_BATCH_ELEMENTS = 2**25
#: Features of recently segmented volumes, shared by every caller that passes no cache, and saved
#: in the user's cache folder (``features/``), so that a scan segmented before is not encoded again.
DEFAULT_CACHE = FeatureCache(folder=lambda: user_cache_folder("features"))

#: ``preview(value, slices, mask)``: structure ``value`` as predicted so far on ``slices`` (indices along the
#: axis), ``mask`` bool with those slices along the axis, before the 3D clean-up and the boundaries.
Preview = Callable[[int, np.ndarray, np.ndarray], None]

_encoders: dict[tuple[str, str, str], Encoder] = {}
_trunks: dict[tuple[int, Runtime], Trunk] = {}
#: per trunk, the seconds and slices it encoded in this process: a run's rate before it encodes
_encoded: dict[Trunk, list[float]] = {}


@dataclass
class Segmentation:
    """What :func:`segment` returns; every volume has the input image's shape and axis order.

    labels : the predicted label values (those of the support; 0 = background), with
        the support labels' dtype; painted slices hold exactly what was painted.
    probabilities : per label value, float32 foreground probability in [0, 1].
    attention : per label value, float32 cosine similarity in [-1, 1] of each voxel's
        features to the structure's foreground prototypes.
    support_slices : per label value, the painted slice indices (along ``axis``) used.
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
    seconds : wall time of ``encode`` (0 when the features were cached), the rest (``head``,
        with the boundaries drawn) and ``total``.
    """

    labels: np.ndarray
    probabilities: dict[int, np.ndarray]
    attention: dict[int, np.ndarray]
    support_slices: dict[int, tuple[int, ...]]
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
    seconds: dict[str, float] = field(default_factory=dict)


class FewShotSession:
    """One scan made ready to segment: the image, its preprocessing, the model on its runtime, its features.

    Made once per scan with the options that decide its features (nnInteractive's
    ``set_image``); :meth:`segment` then takes only a support and
    :class:`~napari_fewshot.core.options.SegmentOptions`, and :meth:`encode` encodes
    slices ahead of any support.  Features live in ``cache`` (default: the shared
    cache, saved in the user's cache folder), so every call reuses what any call
    encoded.  Arguments as for :func:`segment`; ``role`` names the volume in errors.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        spacing: tuple[float, float, float] | None = None,
        encoder: str = DEFAULT_ENCODER,
        head: str = DEFAULT_HEAD,
        weights: str | Path | None = DEFAULT,
        device: str | torch.device = "auto",
        backend: str = "auto",
        precision: str = "auto",
        modality: Modality | None = None,
        axis: int = 0,
        batch_size: int | None = None,
        cache: FeatureCache | None = None,
        role: str = "image",
    ) -> None:
        array = _checked_image(image, role)
        if axis not in (0, 1, 2):
            raise SegmentationError(f"axis must be 0, 1 or 2 (the volume's axis to slice along); got {axis}")
        self.runtime = resolve_runtime(backend, precision, device)
        self.axis, self.spacing, self.shape, self.batch_size = axis, spacing, array.shape, batch_size
        self.volume = _slices_first(array, axis)
        self.aspect = slice_aspect(spacing, axis)
        self.encoder, self.head = encoder, head
        self.model, self.weights, self.trained_trunk = _model(encoder, head, weights, self.runtime.device)
        self.trunk = _trunk(self.model.encoder, self.runtime)
        self.preprocessing = Preprocessing.for_volume(self.volume, modality)
        self.cache = DEFAULT_CACHE if cache is None else cache
        self.key = feature_key(self.volume, self.model.encoder, self.preprocessing, self.aspect,
                               self.trunk.runtime.feature_tag)

    @cached_property
    def window(self) -> tuple[float, float]:
        """The intensities (file units) that map to 0 and 1 for the encoder, the whole volume's (once)."""
        return intensity_window(self.volume, self.preprocessing)

    @property
    def features(self) -> VolumeFeatures:
        """The slices encoded so far (from the cache, in memory or on disk)."""
        return _cached(self.cache, self.key, len(self.volume))

    def encode(
        self, slices: Sequence[int] | None = None, *, progress: Progress | None = None,
        cancel: CancelCheck | None = None,
    ) -> int:
        """Encode the ``slices`` (indices along ``axis``, in this order; default every slice) not encoded yet,
        a batch at a time; returns how many it encoded.  Cancelled, it keeps (and saves) what it finished."""
        entry = self.features
        order = np.arange(len(self.volume)) if slices is None else np.asarray(slices, dtype=int)
        if order.ndim != 1 or (len(order) and not 0 <= order.min() <= order.max() < len(self.volume)):
            last = len(self.volume) - 1
            raise SegmentationError(f"slices must be slice indices from 0 to {last} along axis {self.axis}")
        todo = order[~entry.encoded[order]]
        clock = RunProgress(progress, counted=("encode",))
        clock.plan(encode=len(np.unique(todo)))
        encoding = _Encoding(self.trunk, self.batch_size, clock.advance("encode"), cancel)
        try:
            batch = self.batch_size or self.trunk.batch_size()
            for start in range(0, len(todo), batch):
                encoding(self, entry, todo[start : start + batch])
        finally:
            encoding.save()
        return encoding.slices

    def segment(
        self,
        support_labels: np.ndarray,
        options: SegmentOptions | None = None,
        *,
        slices: Sequence[int] | None = None,
        support: FewShotSession | None = None,
        progress: Progress | None = None,
        preview: Preview | None = None,
        cancel: CancelCheck | None = None,
    ) -> Segmentation:
        """Segment the scan from the structures painted in ``support_labels`` (see :func:`segment`).

        ``support``: the session of the volume the labels were painted on, when it is
        not this one (another patient's scan), made with the same encoder and runtime.
        """
        started = time.perf_counter()
        options = options or SegmentOptions()
        threshold, keep, location, decay_mm, ends = (options.threshold, options.keep, options.location,
                                                     options.decay_mm, options.ends)
        same_volume, support = support is None, support or self
        if support.trunk is not self.trunk:
            raise SegmentationError(
                "the support's session runs another encoder or runtime than this one; make both with the same "
                "encoder, weights, device, backend and precision"
            )
        axis, torch_device = self.axis, self.runtime.device
        queries = _checked_slices(slices, self.shape, axis)
        whole = len(queries) == self.shape[axis]
        keep = keep or ("painted" if same_volume and whole else "all")
        if (keep != "all" and not whole) or (keep == "painted" and not same_volume):
            reason = "the painting is on another volume" if whole else "only some slices are predicted"
            choices = KEEP if same_volume and whole else KEEP[:2] if whole else KEEP[:1]
            raise SegmentationError(
                f"keep='{keep}' is not possible here ({reason}); choose one of {', '.join(choices)}"
            )
        location = same_volume if location is None else location
        if location and not same_volume:
            raise SegmentationError(
                "location=True needs the painting on the image itself; the support is another volume"
            )
        if decay_mm is not None and not same_volume:
            raise SegmentationError(
                f"decay_mm={decay_mm} is not possible here: it needs the painting on the image itself"
            )
        ends, intensity_ends, hold_between, hold_past, follow = (
            _where_possible(name, getattr(options, name), same_volume and whole)
            for name in ("ends", "intensity_ends", "hold_between", "hold_past", "follow_anatomy")
        )
        outward = same_volume and whole and keep == "painted" and not options.every_slice
        painting = _slices_first(_checked_labels(support_labels, support.shape, same_volume), axis)
        structures = painted_structures(painting)
        query_volume, query_aspect, support_aspect = self.volume, self.aspect, support.aspect
        model, trunk = self.model, self.trunk
        boundaries = _checked_boundaries(options.boundaries, self.encoder, self.trained_trunk)
        if self.preprocessing.modality != support.preprocessing.modality:
            warnings.warn(
                f"the image looks like {self.preprocessing.modality} and the support image like "
                f"{support.preprocessing.modality}: a structure is matched by its look, which differs between "
                "modalities. Paint the support on a scan of the image's modality (or give modality= if the guess "
                "is wrong)",
                SupportWarning, stacklevel=3,
            )
        sessions = [self] if same_volume else [self, support]
        features = [session.features for session in sessions]
        support_needed = np.array(sorted({z for painted in structures.values() for z in painted}))
        spacing_mm = spacing_first(self.spacing, axis)
        n_query, n_support = len(query_volume), len(support.volume)
        margin, batch_size = math.ceil(OUTWARD_MARGIN_MM / spacing_mm[0]), self.batch_size or trunk.batch_size()
        within = max(1, round(REGROWTH_MM / spacing_mm[0]))  # slices back a structure's regrowth is measured from
        reach = {v: expected_reach(_largest_painting_mm2(painting == v, slices, spacing_mm), spacing_mm[0])
                 for v, slices in structures.items()}
        clock = RunProgress(progress)
        if _encoded.get(trunk, (0, 0))[1]:
            clock.assume("encode", _encoded[trunk][0] / _encoded[trunk][1])
        plan = _Plan(clock, features[0], support_needed if same_volume else support_needed[:0],
                     {v: np.arange(*planned_range(n_query, slices, reach[v], margin)) if outward else queries
                      for v, slices in structures.items()},
                     spare=2 * margin if outward else 0, follow=follow)
        decoder = box_decoder(trunk.runtime) if boundaries == "decoder" else None
        registration, near = None, math.floor(FOLLOW_NEAR_MM / spacing_mm[0] + 1e-9)
        if follow:
            registration = SliceRegistration(query_volume, spacing_mm[1:], self.preprocessing, self.window,
                                             iterations=FOLLOW_ITERATIONS, margin_mm=FOLLOW_MARGIN_MM,
                                             max_side=FOLLOW_MAX_SIDE)
            _sample_follow(registration, painting, structures, clock)
        encoding = _Encoding(trunk, self.batch_size, clock.advance("encode"), cancel)
        encoding(support, features[-1], support_needed)  # the painted slices first: they calibrate the decoder
        probabilities = {v: np.zeros(query_volume.shape, dtype=np.float32) for v in structures}
        attention = {v: np.zeros(query_volume.shape, dtype=np.float32) for v in structures}
        levels, calibrations = _painted_maps(model, features[-1].tensor, painting, structures, n_query, support_aspect,
                                             torch_device, threshold, decoder, clock)
        plan.draw({v for v, calibration in calibrations.items() if calibration.trusted.any()})

        def predict(value: int, batch: np.ndarray) -> None:
            """Encode the slices ``batch`` (those not cached) and predict structure ``value`` there, priors applied."""
            encoding(self, features[0], batch)
            painted_value, slices = painting == value, structures[value]
            _structure_maps(model, features[0].tensor, features[-1].tensor, painted_value, slices, batch,
                            (probabilities[value], attention[value]), aspects=(query_aspect, support_aspect),
                            device=torch_device, advance=clock.advance("head"), cancel=cancel)
            if location:
                apply_location_prior(probabilities[value], painted_value, slices, spacing_mm, batch)
            if decay_mm is not None:
                apply_distance_decay(probabilities[value], slices, spacing_mm[0], decay_mm, batch)
            if same_volume:
                probabilities[value][list(slices)] = painting[list(slices)] == value
            if preview is not None:
                preview(value, batch, np.moveaxis(probabilities[value][batch] > threshold, 0, axis))

        examined = {}
        try:
            for value, slices in structures.items():
                if outward:
                    examined[value] = walk_outward(lambda batch, v=value: predict(v, batch), probabilities[value],
                                                   painting == value, slices, threshold, ends, margin, batch_size,
                                                   reach=reach[value], plan=lambda a, b, v=value: plan.expect(v, a, b),
                                                   within=within)
                else:
                    for start in range(0, len(queries), batch_size):
                        predict(value, queries[start : start + batch_size])
                    examined[value] = _on(queries, n_query)
                plan.walked(value, examined[value], probabilities[value], threshold)
        finally:
            encoding.save()  # what was encoded, even when cancelled
        labels = _merge(probabilities, threshold, painting.dtype)
        painted = painted_slices(painting) if same_volume else None  # another volume's painting is not on this grid
        if painted is not None:
            labels[painted] = painting[painted]
        drawn_by = dict.fromkeys(structures, "prototype")
        for value, support_slices in structures.items():
            painted_value = painting == value
            if value in plan.drawing:
                calibration = calibrations[value]
                # the decoder draws only the slices the prototypes keep; painted slices stay as painted
                _postprocess(labels, value, keep, False, painted_value, support_slices if ends else None, within)
                scales = _per_query(calibration.scales, n_query, n_support, support_slices)
                trusted = (_per_query(calibration.decoder_dice, n_query, n_support, support_slices)
                           > _per_query(calibration.prototype_dice, n_query, n_support, support_slices))
                drawn = draw_boundaries(labels == value, features[0].tensor, decoder, scales, query_aspect,
                                        fixed=_on(painted, n_query) | ~trusted, advance=clock.advance("draw"),
                                        cancel=cancel)
                set_structure(labels, value, drawn)
                drawn_by[value] = _drawn_by(calibration.trusted, support_slices)
            if hold_between or hold_past:
                hold_structure(labels, value, painted_value, support_slices, spacing_mm, hold_between, hold_past)
            _postprocess(labels, value, keep, options.fill_holes, painted_value, support_slices if ends else None,
                         within)
            if follow:  # the slices registration left empty may cut parts off: the clean-up again, ends kept
                _follow(labels, value, painted_value, support_slices, registration, near, clock, cancel)
                _postprocess(labels, value, keep, options.fill_holes, painted_value, None, within)
            if intensity_ends:
                low, high = self.window
                set_structure(labels, value, stop_where_unlike(labels == value, query_volume, painted_value,
                                                               support_slices, high - low))
        clock.plan(draw=clock.finished["draw"], follow=clock.finished["follow"])  # what the plan could only estimate
        if painted is not None:
            labels[painted] = painting[painted]
        presence = {v: structure_presence(attention[v], labels == v, levels[v]) for v in structures}
        finished = time.perf_counter()
        return Segmentation(
            labels=np.moveaxis(labels, 0, axis),
            probabilities={v: np.moveaxis(p, 0, axis) for v, p in probabilities.items()},
            attention={v: np.moveaxis(a, 0, axis) for v, a in attention.items()},
            support_slices=structures,
            boundaries=drawn_by,
            presence=presence,
            encoder=self.encoder,
            head=self.head,
            weights=self.weights,
            device=str(torch_device),
            runtime=trunk.runtime,
            feature_bytes=sum(f.nbytes for f in features),
            examined={v: np.flatnonzero(flags) for v, flags in examined.items()},
            encoded_slices=encoding.slices,
            seconds={"encode": encoding.seconds, "head": finished - started - encoding.seconds,
                     "total": finished - started},
        )


def segment(
    image: np.ndarray,
    support_labels: np.ndarray,
    *,
    support_image: np.ndarray | None = None,
    spacing: tuple[float, float, float] | None = None,
    support_spacing: tuple[float, float, float] | None = None,
    encoder: str = DEFAULT_ENCODER,
    head: str = DEFAULT_HEAD,
    weights: str | Path | None = DEFAULT,
    device: str | torch.device = "auto",
    backend: str = "auto",
    precision: str = "auto",
    modality: Modality | None = None,
    axis: int = 0,
    slices: Sequence[int] | None = None,
    options: SegmentOptions | None = None,
    batch_size: int | None = None,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    preview: Preview | None = None,
    cancel: CancelCheck | None = None,
    **option_values: Any,
) -> Segmentation:
    """Segment every slice of ``image`` from the structures painted in ``support_labels``.

    image : ``[Z, Y, X]`` intensities in file units (HU for CT), any numeric dtype.
    support_labels : integer labels on the grid of ``support_image`` (``image`` when
        that is None); value ``v`` painted on a slice makes it a support slice of
        structure ``v``.  Slices are taken along ``axis``.
    spacing, support_spacing : voxel size in mm per array axis of ``image`` and of
        ``support_image`` (default: ``spacing``); slices are padded to a physical
        square before encoding, so non-square pixels keep their shape.
    encoder, head : registered names (see ``ENCODERS`` and ``HEADS``).
    weights : trained weights: ``default`` (the model shipped for ``encoder`` and ``head``,
        untrained where none ships), ``none`` (untrained), or a model file from ``napari-fewshot train``.
    device : ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``.
    backend, precision : what runs the encoder and the decoder
        (:func:`~napari_fewshot.core.runtime.resolve_runtime`): ``auto`` is OpenVINO in
        bfloat16 on the CPU (float32 where the CPU lacks it), torch with float16 autocast
        on CUDA; ``torch``, ``openvino``; ``f32``, ``bf16``, ``f16``.
    modality : ``CT`` or ``MR``; detected from the intensities when None.
    slices : the slice indices (along ``axis``) to predict; default every slice.
        Only these and the painted slices are encoded (a quick preview of one
        slice); the other slices of the result are 0, painted slices keep their painting.
    options : how the head's maps become labels (:class:`~napari_fewshot.core.options.SegmentOptions`:
        threshold, components kept, location prior, decay, ends, boundaries, hole filling,
        every slice or outward); ``option_values`` replace its fields by name
        (``segment(..., keep="largest")``).  Left None, an option is on where possible;
        ``keep='painted'``, ``location``, ``decay_mm`` and ``ends`` need the painting on
        ``image``, ``keep`` other than ``all`` and ``ends`` every slice predicted.  By
        default each structure is predicted from its painted slices outward until it has
        ended (:func:`~napari_fewshot.core.outward.walk_outward`) and ``OUTWARD_MARGIN_MM``
        beyond; slices no structure reached are never encoded and hold 0 (``examined``).
    batch_size : slices per encoder batch (default: the runtime's; halved on out-of-memory).
    cache : where features are kept between calls (default: a shared cache, saved in the
        user's cache folder; ``FeatureCache()`` keeps them in memory only); a new support
        for the same image re-runs only the head, a later process reads them back.
    progress : ``progress(done, total, seconds_left)`` after each batch: slices done of those planned (each
        slice counts once for the head's prediction, and once more where the decoder draws its
        boundary; the total grows or shrinks as the outward walk learns how far a structure goes),
        and the seconds left at the rates measured so far (None until they can be told;
        :class:`~napari_fewshot.core.progress.RunProgress`).
    preview : ``preview(value, slices, mask)`` after each batch: structure ``value`` as predicted on
        ``slices`` (indices along ``axis``), ``mask`` bool with those slices along ``axis``,
        thresholded but before the 3D clean-up and the boundaries, so that a viewer can show
        the structure growing from its painted slices.
    cancel : asked between batches and inside the encoder; when it returns True the
        run raises :class:`~napari_fewshot.core.errors.SegmentationCancelled`.

    Raises :class:`~napari_fewshot.core.errors.SegmentationError` for bad input,
    with the fix in its message.
    """
    options = _options(options, option_values)
    settings = dict(encoder=encoder, head=head, weights=weights, device=device, backend=backend, precision=precision,
                    modality=modality, axis=axis, batch_size=batch_size, cache=cache)
    session = FewShotSession(image, spacing=spacing, **settings)
    support = None if support_image is None else FewShotSession(
        support_image, spacing=spacing if support_spacing is None else support_spacing, role="support image", **settings
    )
    return session.segment(support_labels, options, slices=slices, support=support, progress=progress,
                           preview=preview, cancel=cancel)


def encode_volume(
    image: np.ndarray,
    *,
    spacing: tuple[float, float, float] | None = None,
    encoder: str = DEFAULT_ENCODER,
    device: str | torch.device = "auto",
    backend: str = "auto",
    precision: str = "auto",
    modality: Modality | None = None,
    axis: int = 0,
    slices: Sequence[int] | None = None,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """The pretrained ``encoder``'s trunk features of the slices of ``image``, as :func:`segment` caches them.

    Returns ``[Z, C, h, w]`` bfloat16 on the CPU (for ``litemedsam``: LiteMedSAM's
    image embeddings, ``[Z, 256, 64, 64]``), slices along ``axis``; only slices not
    in ``cache`` yet are encoded, and what is encoded stays there for :func:`segment`
    (and in its folder, when it has one, even when cancelled).  ``slices``: the slice
    indices to encode, in this order, a batch at a time (default every slice, in
    order); the rows of the others are undefined.  Other arguments as for :func:`segment`.
    """
    session = FewShotSession(image, spacing=spacing, encoder=encoder, device=device, backend=backend,
                             precision=precision, modality=modality, axis=axis, cache=cache)
    session.encode(slices, progress=progress, cancel=cancel)
    return session.features.tensor


def _cached(cache: FeatureCache, key: str, n_slices: int) -> VolumeFeatures:
    """The features ``cache`` holds under ``key``, or a new empty entry for ``n_slices`` slices."""
    return cache.get(key) or VolumeFeatures(n_slices)


class _Plan:
    """The slices a segmentation expects to encode, predict, have the decoder draw and registration follow,
    told to its ``clock``.

    planned : per structure, the slices it is expected to be predicted on (from the outward
        walk's estimate until the walk has ended: :meth:`expect`, :meth:`walked`).
    features : the image's features (what is encoded); painted : slices encoded first.
    spare : of a structure's planned slices, how many are expected empty (the walk's margins),
        so neither drawn nor followed.
    follow : whether registration carries every structure's boundaries (on the slices it is on).
    """

    def __init__(self, clock: RunProgress, features: VolumeFeatures, painted: np.ndarray,
                 planned: dict[int, np.ndarray], spare: int, follow: bool) -> None:
        self.clock, self.features, self.painted, self.planned, self.spare = clock, features, painted, planned, spare
        self.follow = follow
        self.drawing: set[int] = set()  # the structures whose boundaries the decoder draws
        self.present: dict[int, int] = {}  # per structure walked, the slices it is on (those the decoder draws)
        self._tell()

    def draw(self, structures: set[int]) -> None:
        """The decoder will draw these structures' boundaries."""
        self.drawing = structures
        self._tell()

    def expect(self, value: int, first: int, last: int) -> None:
        """Structure ``value`` is now expected on the slices ``first`` to ``last`` (clipped to the scan)."""
        self.planned[value] = np.arange(max(first, 0), min(last, len(self.features.encoded) - 1) + 1)
        self._tell()

    def walked(self, value: int, examined: np.ndarray, probability: np.ndarray, threshold: float) -> None:
        """Structure ``value`` was predicted on the ``examined`` slices (``[Z]`` bool), with ``probability``
        ``[Z, Y, X]``: found where it exceeds ``threshold``."""
        self.planned[value] = np.flatnonzero(examined)
        found = probability[self.planned[value]] > threshold
        self.present[value] = int(np.count_nonzero(found.reshape(len(found), -1).any(axis=1)))
        self._tell()

    def _tell(self) -> None:
        ahead = np.unique(np.concatenate([*self.planned.values(), self.painted]))
        present = {v: self.present.get(v, max(len(p) - self.spare, 1)) for v, p in self.planned.items()}
        self.clock.plan(encode=self.clock.finished["encode"] + len(self.features.missing(ahead)),
                        head=sum(len(p) for p in self.planned.values()),
                        draw=sum(present[v] for v in self.drawing), follow=sum(present.values()) if self.follow else 0)


def _painted_maps(
    model: FewShotModel,
    support_features: torch.Tensor,
    painting: np.ndarray,
    structures: dict[int, tuple[int, ...]],
    n_query: int,
    aspect: float,
    device: torch.device,
    threshold: float,
    decoder: BoxDecoder | None,
    clock: RunProgress,
) -> tuple[dict[int, np.ndarray], dict[int, BoxCalibration]]:
    """What each structure's painted slices tell before any other slice is predicted: per query slice, the
    similarity levels presence is measured on (:func:`similarity_levels`), and, with a ``decoder``, its
    calibration (:func:`calibrate`: whether and how to trust it), whose time tells ``clock`` drawing's rate."""
    levels, calibrations = {}, {}
    n_support = len(support_features)
    for value, support_slices in structures.items():
        painted_value = painting == value
        masks = painted_value[list(support_slices)]
        own = _own_maps(model, support_features, painted_value, support_slices, aspect, device)
        levels[value] = _per_query(similarity_levels(own[:, 1], masks), n_query, n_support, support_slices)
        if decoder is not None:
            started = time.perf_counter()
            calibrations[value] = calibrate(masks, own[:, 0] > threshold, support_features[list(support_slices)],
                                            decoder, aspect)
            clock.sample("draw", time.perf_counter() - started, len(support_slices))
    return levels, calibrations


class _Encoding:
    """``encoding(session, entry, wanted)``: encode the ``wanted`` slices of ``session``'s volume that ``entry``
    (its features) lacks (:func:`encode_slices`) with ``trunk``, keeping ``entry`` in the session's cache.

    Counts the slices it encoded and the seconds it took.  A cancelled run keeps
    the slices it encoded (the cache counts them too); :meth:`save` writes them to the
    caches' folders.
    """

    def __init__(
        self, trunk: Trunk, batch_size: int | None, advance: Callable[[int], None], cancel: CancelCheck | None,
    ) -> None:
        self.trunk, self.batch_size, self.advance, self.cancel = trunk, batch_size, advance, cancel
        self.slices, self.seconds = 0, 0.0
        self.sessions: dict[str, FewShotSession] = {}

    def __call__(self, session: FewShotSession, entry: VolumeFeatures, wanted: np.ndarray) -> None:
        started, before = time.perf_counter(), int(entry.encoded.sum())
        session.cache.put(session.key, entry)
        self.sessions[session.key] = session
        try:
            encode_slices(session.volume, self.trunk, session.preprocessing, entry, wanted, pixel_aspect=session.aspect,
                          window=session.window, batch_size=self.batch_size, advance=self.advance, cancel=self.cancel)
        finally:
            encoded, seconds = int(entry.encoded.sum()) - before, time.perf_counter() - started
            self.slices += encoded
            session.cache.stats.encoded_slices += encoded
            session.cache.put(session.key, entry)
            self.seconds += seconds
            if encoded:
                totals = _encoded.setdefault(self.trunk, [0.0, 0])
                totals[0] += seconds
                totals[1] += encoded

    def save(self) -> None:
        """Write the features of the volumes encoded to their cache's folder (:meth:`FeatureCache.save`)."""
        for key, session in self.sessions.items():
            session.cache.save(key)


def _slices_first(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0)


def _checked_slices(slices: Sequence[int] | None, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The sorted distinct slice indices to predict (every slice when None), or a clear error."""
    n = shape[axis]
    if slices is None:
        return np.arange(n)
    wanted = np.unique(np.asarray(slices).reshape(-1))
    if wanted.size == 0 or not np.issubdtype(wanted.dtype, np.integer) or wanted[0] < 0 or wanted[-1] >= n:
        raise SegmentationError(f"slices must be slice indices from 0 to {n - 1} along axis {axis}; got {slices}")
    return wanted.astype(int)


def _checked_image(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as an array, refused when it is not a 3D, finite, non-constant volume."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise SegmentationError(f"the {name} must be a 3D volume [Z, Y, X]; got {array.ndim} dimensions")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SegmentationError(f"the {name} must hold numbers; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise SegmentationError(
                f"the {name} has {bad} NaN or infinite voxels; replace them (e.g. numpy.nan_to_num) before segmenting"
            )
    if array.size == 0 or array.min() == array.max():
        value = array.flat[0] if array.size else "nothing"
        raise SegmentationError(f"the {name} is constant ({value}): there is nothing to tell the structure from")
    return array


def _checked_labels(labels: np.ndarray, shape: tuple[int, ...], same_volume: bool) -> np.ndarray:
    """``labels`` as an integer array of ``shape`` (the support image's), or a clear error."""
    array = np.asarray(labels)
    if array.shape != shape:
        which = "image" if same_volume else "support image"
        raise SegmentationError(
            f"the support labels have shape {array.shape} but the {which} has {shape}; "
            f"paint the support on a label volume of the {which}'s grid"
        )
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise SegmentationError(f"the support labels must be integers (a label map); got dtype {array.dtype}")
    if array.min() < 0:
        raise SegmentationError("the support labels have negative values; use 0 for unpainted and 1, 2, ... for structures")
    return array


def _model(encoder: str, head: str, weights: str | Path | None, device: torch.device) -> tuple[FewShotModel, str, bool]:
    """The encoder and head with the trained ``weights`` (see :func:`segment`), where those came from, and
    whether they changed the encoder's trunk."""
    source = model_source(weights, encoder, head)
    state, card = read_model(source) if source is not None else ({}, {})
    # a trained trunk gets an encoder object of its own; the shared one keeps its pretrained weights
    trunk = str(source.resolve()) if card.get("trained_trunk") else ""
    model = FewShotModel(_encoder(encoder, device, trunk), _head(head, device)).to(device).eval()
    if source is None:
        return model, "none", False
    apply_model_file(model, state, card, source)
    return model, str(source), bool(trunk)


def _encoder(name: str, device: torch.device, trunk: str = "") -> Encoder:
    """The encoder ``name`` on ``device``, built once per ``trunk`` (a model file's path, or "" for pretrained)."""
    key = (name, str(device), trunk)
    if key not in _encoders:
        try:
            _encoders[key] = build_encoder(name, device)
        except KeyError as error:
            raise SegmentationError(error.args[0]) from error
        except EncoderUnavailable as error:
            raise SegmentationError(str(error)) from error
    return _encoders[key]


def _trunk(encoder: Encoder, runtime: Runtime) -> Trunk:
    """The trunk of ``encoder`` (one of :func:`_encoder`'s, which live as long as the process) on ``runtime``,
    built once per process (:func:`~napari_fewshot.core.runtime.trunk_runner`)."""
    key = (id(encoder), runtime)
    if key not in _trunks:
        _trunks[key] = trunk_runner(encoder, runtime)
    return _trunks[key]


def _options(options: SegmentOptions | None, values: dict[str, Any]) -> SegmentOptions:
    """``options`` (default :class:`SegmentOptions`) with the fields named in ``values`` replaced."""
    unknown = set(values) - {f.name for f in fields(SegmentOptions)}
    if unknown:
        names = ", ".join(f.name for f in fields(SegmentOptions))
        raise SegmentationError(f"unknown option {', '.join(sorted(unknown))}; the options are {names}")
    return replace(options or SegmentOptions(), **values)


def _checked_boundaries(boundaries: str | None, encoder: str, trained_trunk: bool) -> str:
    """Who draws the boundaries (see :class:`SegmentOptions`), or a clear error when the decoder cannot."""
    possible = encoder == "litemedsam" and not trained_trunk
    if boundaries is None:
        return "decoder" if possible else "prototype"
    if boundaries == "decoder" and not possible:
        why = "a model whose encoder trunk was trained" if encoder == "litemedsam" else f"the '{encoder}' encoder"
        raise SegmentationError(
            f"boundaries='decoder' prompts LiteMedSAM's decoder with LiteMedSAM's own image embeddings, which {why} "
            "does not make; use encoder='litemedsam' with its pretrained trunk, or boundaries='prototype'"
        )
    return boundaries


def _largest_painting_mm2(painted: np.ndarray, slices: tuple[int, ...], spacing_mm: tuple[float, float, float]) -> float:
    """The area (mm²) of the largest painting ``painted`` ``[Z, Y, X]`` bool holds on its painted ``slices``."""
    pixels = painted[list(slices)].reshape(len(slices), -1).sum(axis=1).max()
    return float(pixels) * spacing_mm[1] * spacing_mm[2]


def _on(slices: np.ndarray | None, n: int) -> np.ndarray:
    """``[n]`` bool, True at ``slices``."""
    flags = np.zeros(n, dtype=bool)
    if slices is not None:
        flags[slices] = True
    return flags


def _head(name: str, device: torch.device) -> Head:
    try:
        return build_head(name).to(device)
    except KeyError as error:
        raise SegmentationError(error.args[0]) from error


def _structure_maps(
    model: FewShotModel,
    query_features: torch.Tensor,
    support_features: torch.Tensor,
    painted: np.ndarray,
    painted_slices: tuple[int, ...],
    queries: np.ndarray,
    out: tuple[np.ndarray, np.ndarray],
    *,
    aspects: tuple[float, float],
    device: torch.device,
    advance: Callable[[int], None],
    cancel: CancelCheck | None,
) -> None:
    """One structure's probability and attention on the slices ``queries``, written into ``out``
    (two ``[Z, Y, X]`` float32 arrays)."""
    probability, attention = out
    query_shape, n_query = probability.shape[1:], len(probability)
    wanted = set(queries.tolist())
    groups = assign_supports(n_query, len(support_features), painted_slices)
    with torch.inference_mode():
        for support_slices, group in groups.items():
            group_queries = [z for z in group if z in wanted]
            if not group_queries:
                continue
            support, mask = _support(model, support_features, painted, support_slices, aspects[1], device)
            positions = support.shape[-2] * support.shape[-1]
            batch = max(1, HEAD_BATCH_ELEMENTS // (len(support_slices) * positions**2))
            for start in range(0, len(group_queries), batch):
                check_cancel(cancel)
                chunk = group_queries[start : start + batch]
                query = model.features(query_features[chunk].to(device))
                maps = _predict(model, support, mask, query, query_shape, aspects[0])
                probability[chunk], attention[chunk] = maps[:, 0], maps[:, 1]
                advance(len(chunk))


def _support(
    model: FewShotModel, support_features: torch.Tensor, painted: np.ndarray, slices: tuple[int, ...], aspect: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head features ``[S, C, h, w]`` of the painted ``slices`` and their painting on the head's grid ``[S, h, w]``."""
    index = list(slices)
    support = model.features(support_features[index].to(device))
    # features are square: the mask goes to their grid as the slices went to the encoder's
    mask = to_encoder_slices(painted[index].astype(np.float32), support.shape[-1], aspect)[:, 0].to(device)
    return support, mask


def _predict(
    model: FewShotModel, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, shape: tuple[int, int],
    aspect: float,
) -> np.ndarray:
    """Foreground probability and attention ``[Q, 2, H, W]`` float32 of head features ``query`` on the slice grid ``shape``."""
    output = model.head(support, mask, query)
    maps = torch.stack([output.logits.softmax(dim=1)[:, 1], output.attention], dim=1)
    return from_encoder_slices(maps, shape, aspect).cpu().numpy()


def _own_maps(
    model: FewShotModel,
    support_features: torch.Tensor,
    painted: np.ndarray,
    slices: tuple[int, ...],
    aspect: float,
    device: torch.device,
) -> np.ndarray:
    """Probability and attention ``[S, 2, H, W]`` float32 of each painted slice predicted by the head from itself.

    ``support_features`` ``[Z, C, h, w]`` are the encoder's; ``painted`` ``[Z, H, W]``
    bool, the structure's painting.  Where the truth is known, these calibrate the
    decoder (:func:`~napari_fewshot.core.boundaries.calibrate`) and set the scale of presence.
    """
    shape = painted.shape[1:]
    with torch.inference_mode():
        support, mask = _support(model, support_features, painted, slices, aspect, device)
        return np.concatenate([
            _predict(model, support[i : i + 1], mask[i : i + 1], support[i : i + 1], shape, aspect)
            for i in range(len(slices))
        ])


def _per_query(values: np.ndarray, n_query: int, n_support: int, painted: tuple[int, ...]) -> np.ndarray:
    """``[n_query, ...]``: for each query slice, the mean of ``values`` ``[S, ...]`` (one row per painted
    slice) over the painted slice(s) it takes its support from."""
    row = {z: i for i, z in enumerate(painted)}
    spread = np.zeros((n_query, *values.shape[1:]))
    for support_slices, group in assign_supports(n_query, n_support, painted).items():
        spread[group] = values[[row[z] for z in support_slices]].mean(axis=0)
    return spread


def _where_possible(name: str, wanted: bool | None, possible: bool) -> bool:
    """Option ``name`` (True, False, or None: where ``possible``), refused where it is not possible."""
    if wanted and not possible:
        raise SegmentationError(
            f"{name}=True needs the painting on the image itself and every slice predicted; use {name}=False"
        )
    return possible if wanted is None else wanted


def _sample_follow(registration: SliceRegistration, painting: np.ndarray, structures: dict[int, tuple[int, ...]],
                   clock: RunProgress) -> None:
    """Time one carry of the first structure's painting onto a neighbouring slice: the follow stage's rate
    before it runs (``painting`` ``[Z, Y, X]`` labels)."""
    value, (source, *_) = next(iter(structures.items()))
    if len(painting) > 1:
        started = time.perf_counter()
        registration(painting[source] == value, source, source + 1 if source + 1 < len(painting) else source - 1)
        clock.sample("follow", time.perf_counter() - started, 1)


def _follow(labels: np.ndarray, value: int, painted: np.ndarray, painted_slices: tuple[int, ...],
            registration: SliceRegistration, near: int, clock: RunProgress, cancel: CancelCheck | None) -> None:
    """Structure ``value`` of ``labels`` ``[Z, Y, X]`` with its boundaries carried from the paintings
    (:func:`follow_anatomy`, unbounded ``near`` slices past them), in place; a slice it grows onto claims only
    background, never another structure."""
    advance = clock.advance("follow")

    def carried(slices: int) -> None:
        advance(slices)
        check_cancel(cancel)

    set_structure(labels, value, follow_anatomy(labels == value, painted, painted_slices, registration, near=near,
                                                advance=carried))


def _drawn_by(trusted: np.ndarray, painted: tuple[int, ...]) -> str:
    """``decoder``, ``prototype``, or which painted slices' neighbours each drew (``trusted`` ``[S]`` bool)."""
    if trusted.all() or not trusted.any():
        return BOUNDARIES[int(trusted.all())]
    near = {flag: ", ".join(str(z) for z, t in zip(painted, trusted) if t == flag) for flag in (True, False)}
    return f"decoder near painted slices {near[True]}; prototype near {near[False]}"


def _merge(probabilities: dict[int, np.ndarray], threshold: float, dtype: np.dtype) -> np.ndarray:
    """Labels ``[Z, Y, X]``: the most probable structure where its probability exceeds ``threshold``."""
    values = np.array(list(probabilities), dtype=dtype)
    best = np.zeros(next(iter(probabilities.values())).shape, dtype=np.float32)
    labels = np.zeros(best.shape, dtype=dtype)
    for value, probability in zip(values, probabilities.values()):
        wins = probability > np.maximum(best, threshold)
        labels[wins] = value
        best = np.maximum(best, probability)
    return labels


def _postprocess(
    labels: np.ndarray, value: int, keep: str, fill_holes: bool, painted: np.ndarray, ends_from: tuple[int, ...] | None,
    within: int,
) -> None:
    """Apply the chosen 3D post-processing to structure ``value`` of ``labels``, in place.

    ``painted`` ``[Z, Y, X]`` bool: where the user painted ``value``.  ``ends_from``: the
    painted slices to stop the structure's ends from (:func:`stop_at_ends`, measuring a regrowth from the
    ``within`` slices before it), or None.
    Hole filling claims only background, never another structure.
    """
    mask = labels == value
    if keep == "largest":
        kept = largest_component(mask)
    elif keep == "painted":
        kept = connected_to(mask, painted)
    else:
        kept = mask
    if ends_from is not None:
        kept = stop_at_ends(kept, ends_from, within)
    if fill_holes:
        kept = fill_slice_holes(kept)
    set_structure(labels, value, kept)
