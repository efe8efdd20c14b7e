"""The chosen encoder prepared for OpenVINO in a process of its own, before the first run, so the GUI never waits.

A conversion (:mod:`~napari_fewshot.core.prepare`) holds Python's GIL for a minute
or more on a small CPU: run in the widget's process it would freeze the viewer.
:class:`ModelPreparer` runs it as ``python -m napari_fewshot.core.prepare`` and
tells the widget how it goes; the widget's encoding ahead waits for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial

from qtpy.QtCore import QProcess, QTimer

from ..core.prepare import is_prepared, prepare_key
from ..core.progress import duration
from ..core.rates import measured_rate
from ..core.runtime import Runtime


class ModelPreparer:
    """Prepares one encoder and runtime at a time in a process of its own, each at most once.

    show : ``show(line)``, the preparing line, each second while it runs.
    ended : ``ended(problem)`` when the process ended: None once prepared, else one line saying what failed
        (runs then convert in their own worker, as without preparing).
    """

    def __init__(self, show: Callable[[str], None], ended: Callable[[str | None], None]) -> None:
        self.show, self.ended = show, ended
        self._running: tuple[QProcess, tuple[str, Runtime], float] | None = None  # process, what, when it began
        self._tried: set[tuple[str, Runtime]] = set()  # prepared (or failed) by a process here: not again
        self._timer = QTimer()
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self._show)

    @property
    def busy(self) -> bool:
        """Whether a preparing process runs."""
        return self._running is not None

    def waits(self, encoder: str, runtime: Runtime) -> bool:
        """Whether a run encoding with ``encoder`` on ``runtime`` should wait: it is being prepared, or needs to be
        and its preparing starts now (one for other settings is stopped)."""
        what = (encoder, runtime)
        if self._running is not None:
            if self._running[1] == what:
                return True
            self.stop()
        if what in self._tried or is_prepared(encoder, runtime):
            return False
        process = QProcess()
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.finished.connect(partial(self._finished, process))
        process.start(sys.executable, ["-m", "napari_fewshot.core.prepare", "--encoder", encoder,
                                       "--backend", runtime.backend, "--precision", runtime.precision])
        self._running = (process, what, time.perf_counter())
        self._timer.start()
        self._show()
        return True

    def stop(self) -> None:
        """The preparing process (if any) is killed and forgotten."""
        if self._running is None:  # nothing to stop (Qt may have deleted the timer already, at the app's end)
            return
        self._timer.stop()
        process, self._running = self._running[0], None
        if process.state() != QProcess.ProcessState.NotRunning:
            process.kill()
            process.waitForFinished(2000)

    def _show(self) -> None:
        """The preparing line: what is converted, the seconds so far, and how long it took here before."""
        if self._running is None:
            return
        _, (encoder, runtime), started = self._running
        seconds = measured_rate(prepare_key(encoder, runtime))
        about = f": about {duration(seconds)}" if seconds else ""
        self.show(f"Preparing the model for this CPU, once (converting {encoder} to OpenVINO{about})... "
                  f"{time.perf_counter() - started:.0f} s")

    def _finished(self, process: QProcess, code: int, status: QProcess.ExitStatus) -> None:
        if self._running is None or self._running[0] is not process:
            return
        self._tried.add(self._running[1])
        self.stop()
        problem = None
        if code != 0 or status != QProcess.ExitStatus.NormalExit:
            lines = bytes(process.readAll()).decode(errors="replace").strip().splitlines()
            line = lines[-1] if lines else "preparing the model failed"
            problem = f"{line[0].upper()}{line[1:]}; the first run converts it instead."
        self.ended(problem)
