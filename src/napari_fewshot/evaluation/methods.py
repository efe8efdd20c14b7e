"""The methods a benchmark compares, by name: this project's engine and the peers' propagation.

- ``HEAD[@WEIGHTS][:KEEP][+FLAG...]``: the engine (:func:`~napari_fewshot.core.engine.segment`)
  with a head (``dspnet``, ``alpnet``, ``panet``), weights (``default``: the
  shipped model, ``none``: untrained, or a model file), the 3D components it
  keeps (``painted``: those touching the painting, the engine's default; ``largest``;
  ``all``; the cross-volume protocol keeps all), and flags: who draws the boundaries
  (``+decoder``: LiteMedSAM's decoder prompted by the prototypes, the engine's
  default with the ``litemedsam`` encoder; ``+prototype``: the head), ``+nolocation``
  (no in-plane location prior), ``+noends``, ``+nointensity`` (no stop where a
  structure loses the painting's intensities), ``+decay``, ``+every`` (every slice
  predicted, not only from the painting outward to where the structure ends),
  ``+nobetween`` (several painted slices do not hold each structure near the shape
  between them), ``+nopast`` (nor stop it one gap past the outermost),
  ``+nofollow`` (the boundaries are not carried from slice to slice by registration),
  ``+registered`` (on every slice where the engine predicts the structure, the
  registration peer's mask instead, where it has one: the crude fusion the
  engine's ``follow_anatomy`` is measured against), and ``+threshold=P`` (the
  probability a structure must exceed, default ``0.5``);
- ``litemedsam-box``: the painted mask's box prompts LiteMedSAM on the next slice,
  each predicted mask's box the one after, until the mask vanishes;
- ``registration``: the mask warped slice to slice by demons registration;
- ``interpolation``: 3D Slicer's "Fill between slices", ITK's morphological
  contour interpolation between the painted slices (nothing beyond the
  outermost ones; with one painted slice, that slice alone);
- ``copy``: the painted mask copied to every slice of the structure's true extent
  (it knows where the structure ends: a floor, not a method).

Each method maps a :class:`~napari_fewshot.evaluation.cases.Task` to a boolean
mask ``[Z, Y, X]``.  The peers propagate within one volume, so they take no part
in the cross-volume protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.boundaries import BOUNDARIES
from ..core.engine import DEFAULT_ENCODER, encode_volume, segment
from ..core.errors import SegmentationError
from ..core.features import FeatureCache
from ..core.heads import HEADS
from ..core.model import DEFAULT, UNTRAINED
from ..core.options import DEFAULT_THRESHOLD, SegmentOptions
from ..core.prediction import SupportBuilder
from ..core.preprocess import Preprocessing
from ..core.registration import SliceRegistration
from ..core.priors import DECAY_MM
from ..core.runtime import resolve_runtime
from ..core.sam_decoder import BoxDecoder
from ..core.store import DEFAULT_STORE
from .cases import Task
from .interpolation import interpolate, interpolation_missing
from .propagation import BoxPromptStep, copy_step, propagate
from .protocols import extent, query_thirds

BASELINES = ("litemedsam-box", "registration", "interpolation", "copy")
#: The flags that switch the engine's location prior off, its stop at each structure's ends off, its stop where a
#: structure loses the painting's intensities off, its distance decay on, its prediction of every slice on, its
#: holding of structures near the shape between several paintings off, its stop one gap past the outermost
#: painting off, and its boundaries carried by registration off.
NO_LOCATION, NO_ENDS, NO_INTENSITY, DECAY, EVERY = "nolocation", "noends", "nointensity", "decay", "every"
NO_BETWEEN, NO_PAST, NO_FOLLOW = "nobetween", "nopast", "nofollow"
#: The flag that draws the engine's slices with the registration peer's masks.
REGISTERED = "registered"
#: What may follow ``+`` in an engine method's name: who draws the boundaries, or a prior switched.
FLAGS = (*BOUNDARIES, NO_LOCATION, NO_ENDS, NO_INTENSITY, DECAY, EVERY, NO_BETWEEN, NO_PAST, NO_FOLLOW, REGISTERED)
#: The flag that sets the engine's threshold, as ``+threshold=P``.
THRESHOLD = "threshold"


@dataclass
class Context:
    """What the methods of one run share: the device and runtime, the cache of encoded volumes, and how the
    engine builds a support from painted slices (``None``: the engine's own, :func:`~napari_fewshot.core.prediction.painted_support`)."""

    device: str = "auto"
    encoder: str = DEFAULT_ENCODER
    cache: FeatureCache = field(default_factory=FeatureCache)
    backend: str = "auto"
    precision: str = "auto"
    build_support: SupportBuilder | None = None

    @property
    def runtime(self) -> dict[str, str]:
        """The engine's arguments that say where it runs."""
        return dict(device=self.device, backend=self.backend, precision=self.precision)

    def decoder(self) -> BoxDecoder:
        return DEFAULT_STORE.decoder(resolve_runtime(**self.runtime))


class Method:
    """A named way to segment a task; :meth:`encoder` names the encoder whose features it reads, if any."""

    name: str
    cross_volume: bool = False

    def encoder(self, context: Context) -> str | None:
        return context.encoder

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        raise NotImplementedError


class EngineMethod(Method):
    cross_volume = True

    def __init__(self, name: str) -> None:
        spec, *flags = name.split("+")
        spec, _, keep = spec.partition(":")
        head, _, weights = spec.partition("@")
        if head not in HEADS:
            raise ValueError(
                f"unknown method '{name}'; choose HEAD[@WEIGHTS][:KEEP][+FLAG...] with a head of "
                f"{', '.join(HEADS)}, or one of {', '.join(BASELINES)}"
            )
        if weights and weights not in (DEFAULT, UNTRAINED) and not Path(weights).is_file():
            raise ValueError(f"method '{name}': weights must be default, none or a model file")
        valued = dict(flag.split("=", 1) for flag in flags if "=" in flag)
        flags = [flag for flag in flags if "=" not in flag]
        unknown = [flag for flag in flags if flag not in FLAGS] + [key for key in valued if key != THRESHOLD]
        if unknown:
            raise ValueError(f"method '{name}': {', '.join(unknown)} is not one of the flags "
                             f"{', '.join(FLAGS)}, {THRESHOLD}=P")
        self.name, self.head, self.weights = name, head, weights or DEFAULT
        self.registered = REGISTERED in flags
        try:
            self.options = SegmentOptions(
                threshold=_probability(valued[THRESHOLD], name) if THRESHOLD in valued else DEFAULT_THRESHOLD,
                keep=keep or "painted", boundaries=next((flag for flag in flags if flag in BOUNDARIES), None),
                location=False if NO_LOCATION in flags else None, ends=False if NO_ENDS in flags else None,
                intensity_ends=False if NO_INTENSITY in flags else None,
                decay_mm=DECAY_MM if DECAY in flags else None, every_slice=EVERY in flags,
                hold_between=False if NO_BETWEEN in flags else None, hold_past=False if NO_PAST in flags else None,
                follow_anatomy=False if NO_FOLLOW in flags else None,
            )
        except SegmentationError as error:
            raise ValueError(f"method '{name}': {error}") from error

    def _segment(self, task: Task, context: Context, support: np.ndarray, options: SegmentOptions,
                 **volumes) -> np.ndarray:
        result = segment(
            task.case.image, support, spacing=task.case.spacing, encoder=context.encoder, head=self.head,
            weights=self.weights, options=options, **context.runtime, cache=context.cache,
            build_support=context.build_support, **volumes,
        )
        return result.labels == 1

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        if task.support_case is None:
            prediction = self._segment(task, context, task.painting(), self.options)
            return registered_inside(prediction, RegistrationMethod()(task, context)) if self.registered else prediction
        prediction = np.zeros(task.truth.shape, dtype=bool)
        for third, slice_index in zip(query_thirds(task.truth), task.support_slices):
            if len(third):
                masks = self._segment(
                    task, context, task.painting((slice_index,)),
                    replace(self.options, keep="all"),
                    support_image=task.support_case.image, support_spacing=task.support_case.spacing, slices=third,
                )
                prediction[third] = masks[third]
        return prediction


def _probability(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"method '{name}': {THRESHOLD}= takes a probability, such as {THRESHOLD}=0.4; "
                         f"got '{text}'") from None


def registered_inside(prediction: np.ndarray, registered: np.ndarray) -> np.ndarray:
    """``prediction`` ``[Z, Y, X]`` bool with each slice that holds it replaced by ``registered``'s (same shape)
    where that slice of ``registered`` is not empty: where and whether from one, the boundary from the other."""
    fused = prediction.copy()
    use = prediction.any(axis=(1, 2)) & registered.any(axis=(1, 2))
    fused[use] = registered[use]
    return fused


def _seeds(task: Task) -> dict[int, np.ndarray]:
    return {z: task.truth[z] for z in task.support_slices}


class BoxPromptMethod(Method):
    name = "litemedsam-box"

    def encoder(self, context: Context) -> str | None:
        return "litemedsam"

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        case = task.case
        embeddings = encode_volume(
            case.image, spacing=case.spacing, encoder=self.encoder(context), cache=context.cache, **context.runtime
        )
        step = BoxPromptStep(embeddings, context.decoder(), case.spacing[1] / case.spacing[2])
        return propagate(_seeds(task), len(case.image), step)


class RegistrationMethod(Method):
    name = "registration"

    def encoder(self, context: Context) -> str | None:
        return None

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        case = task.case
        registration = SliceRegistration(case.image, case.spacing[1:], Preprocessing.for_volume(case.image))
        return propagate(_seeds(task), len(case.image), registration)


class InterpolationMethod(Method):
    name = "interpolation"

    def __init__(self) -> None:
        if (missing := interpolation_missing()) is not None:
            raise ValueError(f"method '{self.name}': {missing}")

    def encoder(self, context: Context) -> str | None:
        return None

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        return interpolate(task.painting(), task.case.spacing)


class CopyMethod(Method):
    name = "copy"

    def encoder(self, context: Context) -> str | None:
        return None

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        first, last = extent(task.truth)
        prediction = propagate(_seeds(task), len(task.case.image), copy_step)
        prediction[:first] = prediction[last + 1 :] = False
        return prediction


def method(name: str) -> Method:
    """The method called ``name`` (see the module's docstring); ``ValueError`` names the choices."""
    baselines = {"litemedsam-box": BoxPromptMethod, "registration": RegistrationMethod,
                 "interpolation": InterpolationMethod, "copy": CopyMethod}
    if name in baselines:
        return baselines[name]()
    return EngineMethod(name)
