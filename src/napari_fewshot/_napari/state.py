"""What the widget's parts share, so that each asks it and none calls another.

The widget makes one :class:`WidgetState` and hands it to its parts (segmenting,
correcting, refining, exporting).  It holds what more than one part reads (the
viewer, the runner, the scan sessions, the hand corrections kept between runs),
asks the widget for the chosen scan and settings, says what happened on the
status line, and carries the events a part sends for the others to react to:
``segmented`` after a run is shown, ``labels_shown`` when a part puts a Labels layer
worth exporting, ``support_edited`` when the support gained slices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from ..core.sessions import Sessions
from .corrections import Mark, corrected_slices
from .layers import grid_message, same_grid
from .results import find_layer, prediction_name, slice_index
from .runner import SegmentationRunner


class Corrections:
    """The hand corrections of each prediction layer: what the widget last wrote into it (``written``) and the
    structures the user erased from a slice (``absent``: :data:`~.corrections.Mark` s; a label volume cannot say
    "absent" as a support, so later runs are told).  Layers compare equal through napari's plugin proxies;
    identity does not hold, so they key by equality."""

    def __init__(self) -> None:
        self.written: dict[Any, np.ndarray] = {}
        self.absent: dict[Any, set[Mark]] = {}

    def forget(self, layer: Any) -> None:
        """``layer`` was closed: nothing about it is kept."""
        self.written.pop(layer, None)
        self.absent.pop(layer, None)


class WidgetState:
    """The widget's shared state (see the module).

    scan : ``scan()`` -> ``(image, support)``, the layers chosen (either may be None).
    settings : ``settings(image)`` -> the model a run on ``image`` uses (encoder, head, device, backend, axis).
    place : ``place(image)`` -> ``(axis, slice)``: the axis the viewer slices along and the slice on screen.
    names : ``names()`` -> the structure names, or None when the text does not parse (the widget said why).
    say : writes the status line.
    expect : ``expect(image, slices)`` -> a run's seconds on ``slices`` slices of ``image`` as measured on this
    machine (None: not measured yet).
    """

    #: a run was shown: ``(result, image, prediction layer, axis, names, whole)``
    segmented = Signal(object, object, object, int, dict, bool)
    #: a part put a Labels layer worth exporting (a prediction, a refined result)
    labels_shown = Signal(object)
    #: the support gained slices (added by hand, or corrections taken into it)
    support_edited = Signal()
    #: a segment run is about to start (the encoding ahead yields to it)
    segment_starting = Signal()

    def __init__(self, viewer: Any, *, scan: Callable[[], tuple[Any, Any]], settings: Callable[[Any], dict[str, Any]],
                 place: Callable[[Any], tuple[int, int]], names: Callable[[], dict[int, str] | None],
                 say: Callable[[str], None], expect: Callable[[Any, int], float | None] = lambda image, n: None) -> None:
        self.viewer = viewer
        self.runner = SegmentationRunner()
        self.sessions = Sessions()  # one engine session per scan, for every run on it
        self.corrections = Corrections()
        self.scan, self.settings, self.place, self.names, self.say = scan, settings, place, names, say
        self.expect = expect

    def refuse(self, message: str, error: bool = False) -> None:
        """Tell the user why nothing happened (status line and a napari notification); returns None."""
        self.say(message)
        (show_error if error else show_warning)(message)

    def failed(self, error: Exception, what: str = "Segmentation") -> None:
        """A run (or an action) failed: one line, ``what`` failed and why (:func:`error_line`)."""
        self.refuse(f"{what} failed: {error_line(error)}", error=True)

    def guarded(self, action: Callable[[], Any], what: str | None = None) -> Callable[..., None]:
        """``action`` (a button's or a shortcut's handler, called without arguments) with any error it raises
        told as one notification line, "``what`` failed: ..." (:meth:`failed`; default: the action's name), never
        as a traceback of the signal that called it."""
        what = what or action.__name__.replace("_", " ").strip().capitalize()

        @functools.wraps(action)
        def run(*_: Any) -> None:
            try:
                action()
            except Exception as error:  # noqa: BLE001 - every error is told to the user, none escapes into Qt
                self.failed(error, what)

        return run

    def checked(self) -> tuple[Any, Labels, dict[int, str]] | None:
        """The scan, the support and the structure names, when a run can use them; else None, the user told why."""
        image, support = self.scan()
        if image is None:
            return self.refuse("Open a scan first (File > Open, or File > Open Sample > napari-fewshot).")
        if image.ndim != 3 or image.rgb:
            return self.refuse(f"'{image.name}' is not a 3D grey-value volume; choose a scan (z, y, x).")
        if support is None:
            return self.refuse("Make a support layer ('New support layer') and paint the structure on one slice.")
        if not same_grid(image, support):
            return self.refuse(grid_message(image, support))
        if not np.any(support.data):
            return self.refuse(f"'{support.name}' has no painted voxel: paint the structure on one slice (label 1; "
                               "more labels for more structures), then segment.")
        names = self.names()
        return None if names is None else (image, support, names)

    def prediction(self, image: Any) -> Labels | None:
        """The prediction layer of ``image``, when there is one."""
        return find_layer(self.viewer, prediction_name(image), Labels, image.data.shape)

    def take_corrections(self, image: Any, support: Labels, axis: int) -> None:
        """Slices of ``image``'s prediction changed by hand since the last run join the support (slices along
        ``axis``), so no correction is lost; a structure erased from a slice is marked absent there."""
        prediction = self.prediction(image)
        written = None if prediction is None else self.corrections.written.get(prediction)
        if written is None or written.shape != prediction.data.shape:
            return
        corrected, erased = corrected_slices(np.asarray(prediction.data), written, axis)
        self.corrections.absent.setdefault(prediction, set()).update(erased)
        slices = copy_slices(prediction, support, corrected, axis)
        self.support_edited.emit()
        if slices or erased:
            added = (f"Slices {', '.join(map(str, slices))} corrected in '{prediction.name}' were added to the "
                     "support. " if slices else "")
            names = self.names() or {}
            gone = "; ".join(f"{names.get(v, f'structure {v}')} on slice {z}" for _, z, v in sorted(erased))
            marked = f"Erased by hand, so marked absent (nothing of it there or past there): {gone}." if erased else ""
            show_info((added + marked).strip())


def copy_slices(source: Any, target: Any, slices: list[int], axis: int) -> list[int]:
    """Copy ``slices`` (along ``axis``) of Labels layer ``source`` into ``target`` as one undoable edit.

    Returns the slices that changed ``target`` (those it already held are left out).
    """
    region = np.zeros(source.data.shape, dtype=bool)
    region[slice_index(slices, axis, source.data.shape)] = True
    where = np.nonzero(region & (source.data != target.data))
    if len(where[0]):
        target.data_setitem(where, np.asarray(source.data)[where])
    return np.unique(where[axis]).tolist()


def error_line(error: BaseException) -> str:
    """One readable line for ``error``: the project's errors as they are (they name the problem and the fix);
    any other with its type and its message's first line (a ``KeyError('')`` is ``KeyError: ''``, never empty)."""
    own = error.__class__.__module__.startswith("napari_fewshot")
    text = str(error).strip()
    if isinstance(error, KeyError) or not text:
        text = repr(error.args[0]) if error.args else ""
    first = text.splitlines()[0] if text else ""
    if own and first:
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
