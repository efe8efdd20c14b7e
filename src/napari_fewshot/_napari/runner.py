"""Run the engine off the GUI thread, one run at a time, with progress and cancel.

:class:`SegmentationRunner` starts a job's function (a segmentation on the scan's
session, the encoding ahead, a refine run) in a napari thread worker.  Progress goes to a bar
in napari's activity dock through Qt signals, so the GUI thread only ever
touches widgets.  A run asked for while another is going cancels that one and
starts when it has stopped: two runs never work at once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QObject, QThreadPool, Signal

from ..core.errors import SegmentationCancelled
from ..core.progress import ForwardProgress, Shown


def _keep_triton_out() -> None:
    """Make torch see Triton as absent when Mesa's LLVM is already loaded in this process.

    Mesa's software and AMD OpenGL drivers (llvmpipe under Xvfb, radeonsi) load
    ``libLLVM``; Triton brings its own LLVM, and loading it afterwards crashes the
    process (a segmentation fault while torchvision imports ``torch._dynamo``, which
    the encoders import).  The engine runs eagerly and never needs Triton, so when
    a ``libLLVM`` is mapped and Triton is not loaded yet, ``import triton`` is made
    to fail as if it were not installed.  Checked before every run: the viewer may
    draw its first frame after this module is imported.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa LLVM clash known
        return
    if "libLLVM" in maps and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]


@dataclass
class Job:
    """One call of ``function`` and what to do with its outcome (called on the GUI thread).

    kwargs : the arguments of ``function`` (its own copies of anything the user may
    edit), which also gets ``progress(done, total, seconds_left)`` and ``cancel()``.  started :
    called when the run begins; done : with what ``function`` returned; failed : with
    the exception; cancelled : with no argument (the run stopped, or was replaced
    before it began).  context : the caller's own notes.  preview : when given,
    ``function`` also gets ``preview(value, slices, mask)`` (see :func:`~napari_fewshot.core.engine.segment`),
    and this is called with the same arguments on the GUI thread.  forward : what its bar shows of the progress
    (:class:`~napari_fewshot.core.progress.ForwardProgress`: the most slices, whether the totals are estimates, the
    time expected); default: the counts as told.
    """

    description: str
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    started: Callable[[], None]
    done: Callable[[Any], None]
    failed: Callable[[Exception], None]
    cancelled: Callable[[], None]
    context: dict[str, Any] = field(default_factory=dict)
    preview: Callable[[int, Any, Any], None] | None = None
    forward: ForwardProgress = field(default_factory=lambda: ForwardProgress(estimate=False))


class SegmentationRunner(QObject):
    """Starts :class:`Job` s in a thread worker; at most one runs, the newest waits for it."""

    #: ``(done, total, seconds_left)`` in slices (steps for a refine run; seconds None until known), emitted from the
    #: worker thread, delivered on the GUI thread.
    progressed = Signal(int, int, object)
    #: what the running job's bar shows (a :class:`~napari_fewshot.core.progress.Shown`: only forward), on the GUI
    #: thread after each ``progressed``
    shown = Signal(object)
    #: ``(value, slices, mask)`` of a segmentation going on, from the worker thread (see :class:`Job`)
    previewed = Signal(int, object, object)
    #: a line saying how the run goes (a refine run's loss and time left), shown beside its bar
    described = Signal(str)
    #: emitted on the GUI thread whenever a run starts or ends
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self._pending: Job | None = None
        self._stop = threading.Event()
        self._worker = None
        self._bar: cancelable_progress | None = None
        self._closed = False
        self._working = threading.Event()  # set while a job's function runs in the worker thread
        self.progressed.connect(self._show_progress)
        self.previewed.connect(self._show_preview)
        self.described.connect(lambda text: self._bar.set_description(text) if self._bar is not None else None)

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def stopping(self) -> bool:
        """True while the running job was asked to stop (by Cancel, or for a run waiting to start)."""
        return self._stop.is_set()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: nothing starts, nothing is called back."""
        return self._closed

    def start(self, job: Job) -> None:
        """Run ``job`` now, or, when a run is going, cancel it and run ``job`` once it has stopped."""
        if self._closed:
            return
        if self.busy:
            if self._pending is not None:
                self._pending.cancelled()
            self._pending = job
            self.cancel()
            return
        self.job = job
        _keep_triton_out()
        self._stop = threading.Event()
        stop, bar = self._stop, cancelable_progress(total=0, desc=job.description)
        self._bar = bar
        kwargs = dict(job.kwargs, progress=self.progressed.emit, cancel=lambda: stop.is_set() or bar.is_canceled)
        if job.preview is not None:
            kwargs["preview"] = self.previewed.emit
        working = self._working
        working.set()

        def work(**arguments: Any) -> Any:
            try:
                return job.function(**arguments)
            finally:
                working.clear()

        worker = create_worker(work, **kwargs, _start_thread=False, _ignore_errors=True)  # errors go to job.failed
        worker.returned.connect(lambda result: self._end(lambda: job.done(result)))
        worker.errored.connect(lambda error: self._end(lambda: self._report(job, error)))
        self._worker = worker
        worker.start()
        self.busy_changed.emit(True)
        job.started()

    def cancel(self) -> None:
        """Ask the running job to stop; the encoder checks before each of its layers."""
        self._stop.set()

    def cancel_all(self) -> None:
        """Cancel the running job and forget the waiting one."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancelled()
        self.cancel()

    def close(self, wait_ms: int = 30_000) -> bool:
        """Stop for good (its widget or viewer is going away): cancel the run, drop the waiting one, call no one
        back, and wait up to ``wait_ms`` for the worker to stop (the encoder checks before each of its layers), so
        that no worker thread outlives the Qt objects it signals.  Returns whether no worker runs any more."""
        self._closed = True
        self._pending = None
        self.cancel()
        deadline = time.monotonic() + wait_ms / 1000
        while self._working.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        QThreadPool.globalInstance().waitForDone(200)  # the worker's last signals, once its function returned
        return not self._working.is_set()

    def _show_preview(self, value: int, slices: Any, mask: Any) -> None:
        job = self.job
        if job is not None and job.preview is not None and not self._closed and not self._stop.is_set():
            job.preview(value, slices, mask)

    def _show_progress(self, done: int, total: int, seconds_left: float | None) -> None:
        job = self.job
        if job is None or self._closed:
            return
        shown: Shown = job.forward(done, total, seconds_left)
        if self._bar is not None:
            if self._bar.total != shown.total:
                self._bar.total = shown.total
            self._bar.update(shown.done - self._bar.n)
        self.shown.emit(shown)

    @staticmethod
    def _report(job: Job, error: Exception) -> None:
        if isinstance(error, SegmentationCancelled):
            job.cancelled()
        else:
            job.failed(error)

    def _end(self, outcome: Callable[[], None]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.job, self._worker = None, None
        if self._closed:
            return
        try:
            outcome()
        finally:
            pending, self._pending = self._pending, None
            if pending is not None:
                self.start(pending)
            else:
                self.busy_changed.emit(False)
