"""One session per scan: every run on a scan shares its preprocessing, its model and its features.

A :class:`~napari_fewshot.core.engine.FewShotSession` is made on a scan's first run
for the settings that decide it and kept until the scan is forgotten; every later
segmentation, and the encoding ahead, runs on it.  The widget keys its sessions by
the scan's layer (made in the worker thread, where the model loads; forgotten when
the layer closes), a benchmark by its case.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cancel import CancelCheck
from .engine import FewShotSession, Preview
from .options import SegmentOptions
from .progress import Progress
from .run import Segmentation


class Sessions:
    """Sessions by scan (any object: a layer, a benchmark's case), its data and the session's settings."""

    def __init__(self) -> None:
        self._sessions: dict[tuple, FewShotSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def session(self, scan: Any, image: np.ndarray, **settings: Any) -> FewShotSession:
        """The session of ``scan`` whose volume is ``image`` (``[Z, Y, X]``, the layer's data) made with
        ``settings`` (:class:`~napari_fewshot.core.engine.FewShotSession`'s keywords), made now if new."""
        key = (id(scan), id(image), tuple(sorted(settings.items())))
        if key not in self._sessions:
            self._sessions[key] = FewShotSession(image, **settings)
        return self._sessions[key]

    def forget(self, scan: Any) -> None:
        """``scan`` is closed: its sessions go (the features stay in the cache)."""
        self._sessions = {key: session for key, session in self._sessions.items() if key[0] != id(scan)}

    def segment(self, scan: Any, *, image: np.ndarray, support_labels: np.ndarray, options: SegmentOptions,
                slices: np.ndarray | None, absent: dict[int, list[int]] | None = None,
                progress: Progress | None = None, preview: Preview | None = None, cancel: CancelCheck | None = None,
                **settings: Any) -> Segmentation:
        """Segment ``scan`` from ``support_labels`` on its session (see :meth:`FewShotSession.segment`)."""
        session = self.session(scan, image, **settings)
        return session.segment(support_labels, options, slices=slices, absent=absent, progress=progress,
                               preview=preview, cancel=cancel)

    def encode(self, scan: Any, *, image: np.ndarray, slices: list[int], progress: Progress | None = None,
               cancel: CancelCheck | None = None, **settings: Any) -> int:
        """Encode the ``slices`` of ``scan`` on its session, in this order (see :meth:`FewShotSession.encode`)."""
        return self.session(scan, image, **settings).encode(slices, progress=progress, cancel=cancel)
