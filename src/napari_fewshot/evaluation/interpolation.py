"""3D Slicer's "Fill between slices" as a peer: ITK's morphological contour interpolation between painted slices.

The interpolation (Albu et al. 2008, "A morphology-based approach for
interslice interpolation of anatomical slices from volumetric images"; the
``itk-morphologicalcontourinterpolation`` package, what Slicer's effect runs)
fills the slices between painted ones and predicts nothing beyond the
outermost painted slices.

ITK's libraries and those of torch or SimpleITK corrupt each other's heap when
loaded in one process (a crash at the latest when the process exits), so the
interpolation runs in a worker process of its own that imports only numpy and
ITK; the worker starts on the first call (loading ITK takes several seconds)
and serves every later call until this process exits.  This module imports
neither torch nor ITK.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

#: The package that holds ITK's filter (the ``bench`` extra installs it).
PACKAGE = "itk-morphologicalcontourinterpolation"


def interpolation_missing() -> str | None:
    """Why :func:`interpolate` cannot run here (ITK's filter is not installed), or None; imports nothing."""
    try:
        version(PACKAGE)
    except PackageNotFoundError:
        return f"interpolation needs ITK's morphological contour interpolation: pip install 'napari-fewshot[bench]' ({PACKAGE})"
    return None


def interpolate(painting: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The painted slices of ``painting`` ``[Z, H, W]`` (non-zero: the structure) and the shapes between them, bool.

    Interpolated along the slice axis (the first); ``spacing``: mm per axis.
    Nothing is predicted beyond the outermost painted slices, and with one painted
    slice the result is that slice alone (no worker is started).  ``RuntimeError``
    when ITK's filter is not installed or the worker fails.
    """
    painting = np.asarray(painting) != 0
    if np.count_nonzero(painting.reshape(len(painting), -1).any(axis=1)) < 2:
        return painting
    if (missing := interpolation_missing()) is not None:
        raise RuntimeError(missing)
    return _WORKER.run(painting.astype(np.uint8), tuple(float(s) for s in spacing))


class _Worker:
    """The process that runs ITK's filter: requests and answers are pickled over its stdin and stdout."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def run(self, painting: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        if self._process is None or self._process.poll() is not None:
            source = str(Path(__file__).resolve().parents[2])  # the folder that holds this package
            environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (source, os.environ.get("PYTHONPATH"))))}
            self._process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, env=environment)
        try:
            pickle.dump((painting, spacing), self._process.stdin)
            self._process.stdin.flush()
            ok, answer = pickle.load(self._process.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as error:
            self.close()
            raise RuntimeError(f"the interpolation worker ended unexpectedly ({error!r})") from error
        if not ok:
            raise RuntimeError(f"the interpolation failed in its worker: {answer}")
        return answer

    def close(self) -> None:
        """End the worker: it exits when its stdin closes (killed if it has not within 30 s)."""
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None


_WORKER = _Worker()
atexit.register(_WORKER.close)


def _fill(painting: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """ITK's morphological contour interpolation of ``painting`` ``[Z, H, W]`` uint8 along Z (in the worker), bool."""
    import itk

    image = itk.image_from_array(painting)
    image.SetSpacing(list(spacing[::-1]))  # ITK: x (columns) first
    filled = itk.morphological_contour_interpolator(image, axis=2)  # ITK's axis 2 is the array's first: the slices
    return itk.array_from_image(filled) != 0


def _serve() -> None:
    """Answer pickled ``(painting, spacing)`` requests on stdin with ``(True, mask)`` or ``(False, message)`` until EOF."""
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever ITK prints goes to stderr, not into the answers
    while True:
        try:
            painting, spacing = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = (True, _fill(painting, spacing))
        except Exception as error:  # noqa: BLE001 - every failure goes back to the caller as a message
            answer = (False, f"{type(error).__name__}: {error}")
        pickle.dump(answer, answers)
        answers.flush()


if __name__ == "__main__":
    _serve()
