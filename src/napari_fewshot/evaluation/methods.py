"""The methods a benchmark compares, by name: this project's engine and the peers' propagation.

- ``HEAD[@WEIGHTS][:KEEP][+FLAG...]``: the engine (:func:`~napari_fewshot.core.engine.segment`)
  with a head (``dspnet``, ``alpnet``, ``panet``), weights (``default``: the
  shipped model, ``none``: untrained, or a model file), the 3D components it
  keeps (``painted``: those touching the painting, the engine's default; ``largest``;
  ``all``; the cross-volume protocol keeps all), and flags, each of which sets one
  of :class:`~napari_fewshot.core.options.SegmentOptions` (its ``method_flag``:
  ``+prototype`` or ``+decoder`` for who draws the boundaries, ``+nolocation``,
  ``+noends``, ``+nofollow`` and the like for a rule switched off, ``+threshold=P``;
  :func:`method_flags` lists them);
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

from collections.abc import Callable
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.engine import DEFAULT_ENCODER, FewShotSession, encode_volume
from ..core.errors import SegmentationError
from ..core.run import Segmentation
from ..core.features import FeatureCache
from ..core.heads import HEADS
from ..core.model import DEFAULT, UNTRAINED
from ..core.options import SegmentOptions, option_fields
from ..core.prediction import SupportBuilder
from ..core.preprocess import Preprocessing
from ..core.registration import SliceRegistration
from ..core.backends import resolve_runtime
from ..core.sessions import Sessions
from ..core.sam_decoder import BoxDecoder
from ..core.store import DEFAULT_STORE
from .cases import Case, Task
from .interpolation import interpolate, interpolation_missing
from .metrics import claims
from .propagation import BoxPromptStep, copy_step, propagate
from .protocols import extent, query_thirds

BASELINES = ("litemedsam-box", "registration", "interpolation", "copy")
def method_flags() -> dict[str, tuple[str, Any]]:
    """What may follow ``+`` in an engine method's name: each flag, and the option it sets to which value (the
    value None for a flag that takes its own, ``FLAG=VALUE``), from :class:`SegmentOptions`' declarations."""
    flags: dict[str, tuple[str, Any]] = {}
    for name, spec in option_fields():
        if spec.method_choices:
            flags.update({choice: (name, choice) for choice in spec.choices})
        if spec.method_flag:
            flags[spec.method_flag.rstrip("=")] = (name, None if spec.method_flag.endswith("=") else spec.method_value)
    return flags



@dataclass
class Context:
    """What the methods of one run share: the device and runtime, the cache of encoded volumes, how the engine
    builds a support from painted slices (``None``: the engine's own,
    :func:`~napari_fewshot.core.prediction.painted_support`), and the engine's session of each case."""

    device: str = "auto"
    encoder: str = DEFAULT_ENCODER
    cache: FeatureCache = field(default_factory=FeatureCache)
    backend: str = "auto"
    precision: str = "auto"
    build_support: SupportBuilder | None = None
    sessions: Sessions = field(default_factory=Sessions)

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
    #: whether it segments every structure painted into one support in one run (``multi``); the peers
    #: propagate one structure at a time, so they take no part there
    paints_together: bool = False

    def encoder(self, context: Context) -> str | None:
        return context.encoder

    def segmenter(self, task: Task, context: Context) -> Callable[[np.ndarray, dict[int, list[int]]],
                                                                 Segmentation] | None:
        """How a user's runs in ``rounds`` segment ``task``'s scan, or None: the method takes no absent marks and
        lists no slices to check, so it takes no part there."""
        return None

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        raise NotImplementedError


class EngineMethod(Method):
    cross_volume = paints_together = True

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
        known, specs = method_flags(), dict(option_fields())
        valued = {key for key, (_, value) in known.items() if value is None}
        values: dict[str, Any] = dict(keep=keep or "painted")
        for flag in flags:
            key, _, text = flag.partition("=")
            if key not in known or (key in valued) != bool(text):
                choices = [f"{k}=VALUE" if k in valued else k for k in known]
                raise ValueError(f"method '{name}': {flag} is not one of the flags {', '.join(choices)}")
            option, value = known[key]
            if key in valued:
                try:
                    value = specs[option].parse(option, text)
                except ValueError as error:
                    raise ValueError(f"method '{name}': {flag}: {error}") from None
            values[option] = value
        self.name, self.head, self.weights = name, head, weights or DEFAULT
        try:
            self.options = SegmentOptions(**values)
        except SegmentationError as error:
            raise ValueError(f"method '{name}': {error}") from error

    def _session(self, case: Case, context: Context, role: str = "image") -> FewShotSession:
        return context.sessions.session(
            case, case.image, spacing=case.spacing, encoder=context.encoder, head=self.head, weights=self.weights,
            cache=context.cache, build_support=context.build_support, role=role, **context.runtime)

    def _segment(self, task: Task, context: Context, support: np.ndarray, options: SegmentOptions,
                 slices: np.ndarray | None = None) -> np.ndarray:
        painted_on = None if task.support_case is None else self._session(task.support_case, context, "support image")
        result = self._session(task.case, context).segment(support, options, slices=slices, support=painted_on)
        return result.labels == 1

    def segmenter(self, task: Task, context: Context) -> Callable[[np.ndarray, dict[int, list[int]]], Segmentation]:
        """``segment(painting, absent)``: the engine's segmentation of ``task``'s scan from a painting and the slices
        each structure is marked absent on, with this method's options (the user's runs in rounds)."""
        session = self._session(task.case, context)
        return lambda painting, absent: session.segment(painting, self.options, absent=absent)

    def __call__(self, task: Task, context: Context) -> np.ndarray:
        if task.together is not None:
            return self._together(task, context)
        if task.support_case is None:
            return self._segment(task, context, task.painting(), self.options)
        prediction = np.zeros(task.truth.shape, dtype=bool)
        for third, slice_index in zip(query_thirds(task.truth), task.support_slices):
            if len(third):
                masks = self._segment(task, context, task.painting((slice_index,)),
                                      replace(self.options, keep="all"), slices=third)
                prediction[third] = masks[third]
        return prediction


    def _together(self, task: Task, context: Context) -> np.ndarray:
        """Task's structure from the one run of every structure painted together (run by the case's first task)."""
        together = task.together
        if self.name not in together.runs:
            started = time.perf_counter()
            result = self._session(task.case, context).segment(together.painting(task.case), self.options)
            together.runs[self.name] = {
                "labels": result.labels, "seconds": time.perf_counter() - started,
                "claims": claims(result.probabilities, result.options.threshold, result.labels, task.case.truth),
            }
        return together.runs[self.name]["labels"] == task.value


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


#: The methods by name other than the engine's: the peers (``BASELINES``), and what a benchmark adds
#: (:func:`register_method`).
METHODS: dict[str, Callable[[], Method]] = dict(
    zip(BASELINES, (BoxPromptMethod, RegistrationMethod, InterpolationMethod, CopyMethod), strict=True)
)


def register_method(name: str, make: Callable[[], Method]) -> None:
    """Make ``evaluate --methods name`` run ``make()`` (a benchmark's own method, kept out of this package)."""
    METHODS[name] = make


def method(name: str) -> Method:
    """The method called ``name`` (see the module's docstring); ``ValueError`` names the choices."""
    if name in METHODS:
        return METHODS[name]()
    return EngineMethod(name)
