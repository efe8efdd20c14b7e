"""The volume engine: segment every slice of a volume from the slices a user painted.

:func:`segment` is the one function behind the Python API, the command line and
the widget; :class:`FewShotSession` is one scan made ready to segment, whose
:meth:`~FewShotSession.segment` runs one segmentation as named stages: resolve the
options for the call, plan, encode the painted slices, predict each structure,
apply the rules to each (:mod:`~napari_fewshot.core.rules`) and merge them, package the result.
Arrays in (numpy, file units), arrays out; no napari or Qt here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cancel import CancelCheck
from .encoding import Encoding
from .errors import SegmentationError
from .features import DEFAULT_CACHE, FeatureCache, VolumeFeatures, feature_key
from .heads import DEFAULT_HEAD
from .inputs import checked_image, checked_labels
from .intensity import Modality
from .model import DEFAULT
from .options import SegmentOptions, with_values
from .prediction import SupportBuilder, painted_support
from .preprocess import Preprocessing, intensity_window, slice_aspect, spacing_first
from .progress import Progress, RunProgress
from .run import Segmentation, SegmentationRun
from .backends import resolve_runtime
from .store import DEFAULT_STORE, ModelStore

DEFAULT_ENCODER = "litemedsam"

#: ``preview(value, slices, mask)``: structure ``value`` as predicted so far on ``slices`` (indices along the
#: axis), ``mask`` bool with those slices along the axis, before the 3D clean-up and the boundaries.
Preview = Callable[[int, np.ndarray, np.ndarray], None]


class FewShotSession:
    """One scan made ready to segment: the image, its preprocessing, the model on its runtime, its features.

    Made once per scan with the options that decide its features (nnInteractive's
    ``set_image``); :meth:`segment` then takes only a support and
    :class:`~napari_fewshot.core.options.SegmentOptions`, and :meth:`encode` encodes
    slices ahead of any support.  Features live in ``cache`` (default: the shared
    cache, saved in the user's cache folder), so every call reuses what any call
    encoded; the models come from ``store`` (default: the process's
    :data:`~napari_fewshot.core.store.DEFAULT_STORE`).  ``build_support``: how the
    head's support is made from painted slices
    (:class:`~napari_fewshot.core.prediction.SupportBuilder`).  Other arguments as for
    :func:`segment`; ``role`` names the volume in errors.

    The session keeps a read-only copy of ``image`` (``volume``, slices first), so
    that changing the caller's array later changes neither its segmentations nor
    the features it caches under the image's key; make a new session for a changed
    image.  The copy costs the image's size once (a 300x512x512 int16 CT: 150 MB,
    about 0.05 s; hashing it for the key takes about 0.3 s).
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
        store: ModelStore | None = None,
        build_support: SupportBuilder | None = None,
        role: str = "image",
    ) -> None:
        array = checked_image(image, role)
        if axis not in (0, 1, 2):
            raise SegmentationError(f"axis must be 0, 1 or 2 (the volume's axis to slice along); got {axis}")
        self.runtime = resolve_runtime(backend, precision, device)
        self.axis, self.spacing, self.shape, self.batch_size = axis, spacing, array.shape, batch_size
        self.volume = np.array(np.moveaxis(array, axis, 0), order="C")  # the session's own, see above
        self.volume.flags.writeable = False
        self.aspect = slice_aspect(spacing, axis)
        self.spacing_mm = spacing_first(spacing, axis)
        self.encoder, self.head = encoder, head
        self.store = DEFAULT_STORE if store is None else store
        self.build_support = build_support or painted_support
        self.model, self.weights, self.trained_trunk = self.store.model(encoder, head, weights, self.runtime.device)
        self.trunk = self.store.trunk(self.model.encoder, self.runtime)
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
        shape = (len(self.volume), *self.model.encoder.trunk_shape)
        return self.cache.get(self.key, shape) or VolumeFeatures(len(self.volume))

    @property
    def decoder_refused(self) -> str | None:
        """Why LiteMedSAM's decoder cannot draw this model's boundaries (it needs LiteMedSAM's own
        embeddings), or None when it can."""
        if self.encoder != "litemedsam":
            return f"the '{self.encoder}' encoder"
        return "a model whose encoder trunk was trained" if self.trained_trunk else None

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
        encoding = Encoding(self.trunk, self.store, self.batch_size, clock.advance("encode"), cancel)
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
        options: SegmentOptions | Mapping[str, Any] | None = None,
        *,
        slices: Sequence[int] | None = None,
        absent: Mapping[int, Iterable[int]] | None = None,
        support: FewShotSession | None = None,
        progress: Progress | None = None,
        preview: Preview | None = None,
        cancel: CancelCheck | None = None,
        **option_values: Any,
    ) -> Segmentation:
        """Segment the scan from the structures painted in ``support_labels`` (see :func:`segment`).

        ``support``: the session of the volume the labels were painted on, when it is
        not this one (another patient's scan), made with the same encoder and runtime.
        ``option_values`` replace fields of ``options`` by name (``session.segment(labels, keep="largest")``).
        """
        started = time.perf_counter()
        run = SegmentationRun(self, self._support(support), progress, preview, cancel)
        run.resolve(support_labels, with_values(options, option_values), slices, absent)
        run.plan()
        run.encode_painted()
        try:
            run.predict()
        finally:
            run.encoding.save()  # what was encoded, even when cancelled
        labels = run.apply_rules()
        return run.result(labels, started)

    def _support(self, support: FewShotSession | None) -> FewShotSession:
        """The session the labels were painted on (this one when None), refused when it runs another model."""
        if support is not None and support.trunk is not self.trunk:
            raise SegmentationError(
                "the support's session runs another encoder or runtime than this one; make both with the same "
                "encoder, weights, device, backend and precision"
            )
        return support or self


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
    absent: Mapping[int, Iterable[int]] | None = None,
    options: SegmentOptions | Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    preview: Preview | None = None,
    cancel: CancelCheck | None = None,
    store: ModelStore | None = None,
    build_support: SupportBuilder | None = None,
    **option_values: Any,
) -> Segmentation:
    """Segment every slice of ``image`` from the structures painted in ``support_labels``.

    image : ``[Z, Y, X]`` intensities in file units (HU for CT), any numeric dtype.
    support_labels : integer labels on the grid of ``support_image`` (``image`` when
        that is None); value ``v`` painted on a slice makes it a support slice of
        structure ``v``: its whole truth on that slice, while the structures not painted
        there are unknown there (predicted as on any slice).  Slices are taken along ``axis``.
    spacing, support_spacing : voxel size in mm per array axis of ``image`` and of
        ``support_image`` (default: ``spacing``); slices are padded to a physical
        square before encoding, so non-square pixels keep their shape.
    encoder, head : registered names (see ``ENCODERS`` and ``HEADS``).
    weights : trained weights: ``default`` (the model shipped for ``encoder`` and ``head``,
        untrained where none ships), ``none`` (untrained), or a model file from ``napari-fewshot train``.
    device : ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``mps``.
    backend, precision : what runs the encoder and the decoder
        (:func:`~napari_fewshot.core.backends.resolve_runtime`): ``auto`` is OpenVINO in
        bfloat16 on the CPU (float32 where the CPU lacks it), torch with float16 autocast
        on CUDA; ``torch``, ``openvino``; ``f32``, ``bf16``, ``f16``, ``int8`` (OpenVINO only).
    modality : ``CT`` or ``MR``; detected from the intensities when None.
    slices : the slice indices (along ``axis``) to predict; default every slice.
        Only these and the painted slices are encoded (a quick preview of one
        slice); the other slices of the result are 0, painted slices keep their painting.
    absent : per label value, the slice indices (along ``axis``) where that structure is not
        (``{2: [40]}``): it is predicted neither there nor past there on the side away from
        its painted slices (an absent slice between two paintings clears only that slice).
        Each structure marked must be painted, and not on a slice it is marked absent on.
    options : how the head's maps become labels (:class:`~napari_fewshot.core.options.SegmentOptions`:
        threshold, components kept, location prior, decay, ends, boundaries, hole filling,
        every slice or outward; or a dict of its fields by name, ``{"threshold": 0.4}``, checked
        alike); ``option_values`` replace its fields by name (``segment(..., keep="largest")``).
        Left None, an option is on where possible; ``keep='painted'``, ``location``,
        ``decay_mm`` and ``ends`` need the painting on ``image``, ``keep`` other than ``all``
        and ``ends`` every slice predicted.  By
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
    store : where the models are loaded once (default: :data:`~napari_fewshot.core.store.DEFAULT_STORE`).
    build_support : how the head's support is made from the painted slices
        (:class:`~napari_fewshot.core.prediction.SupportBuilder`; default the painted slices as painted).

    Raises :class:`~napari_fewshot.core.errors.SegmentationError` for bad input,
    with the fix in its message.
    """
    options = with_values(options, option_values)  # bad options and labels refused before any model loads
    checked_labels(support_labels, np.shape(image if support_image is None else support_image), support_image is None)
    settings = dict(encoder=encoder, head=head, weights=weights, device=device, backend=backend, precision=precision,
                    modality=modality, axis=axis, batch_size=batch_size, cache=cache, store=store,
                    build_support=build_support)
    session = FewShotSession(image, spacing=spacing, **settings)
    support = None if support_image is None else FewShotSession(
        support_image, spacing=spacing if support_spacing is None else support_spacing, role="support image", **settings
    )
    return session.segment(support_labels, options, slices=slices, absent=absent, support=support,
                           progress=progress, preview=preview, cancel=cancel)


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
    store: ModelStore | None = None,
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
                             precision=precision, modality=modality, axis=axis, cache=cache, store=store)
    session.encode(slices, progress=progress, cancel=cancel)
    return session.features.tensor

