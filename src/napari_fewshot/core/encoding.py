"""The bookkeeping of encoding slices during a run: which volume's entry, how many slices, how long.

A segmentation encodes slices of its image (and of the support's volume when that is
another scan) as it goes; :class:`Encoding` does each step through
:func:`~napari_fewshot.core.features.encode_slices`, keeps each volume's entry in its
session's cache, counts the slices and seconds for the run's result and for the
:class:`~napari_fewshot.core.store.ModelStore`'s rate, and saves what was encoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .cancel import CancelCheck
from .features import VolumeFeatures, encode_slices
from .runtime import Trunk
from .store import ModelStore

if TYPE_CHECKING:
    from .engine import FewShotSession


class Encoding:
    """``encoding(session, entry, wanted)``: encode the ``wanted`` slices (indices) of ``session``'s volume that
    ``entry`` (its features) lacks with ``trunk``, keeping ``entry`` in the session's cache.

    ``slices`` and ``seconds`` count what it encoded.  A cancelled run keeps the slices
    it encoded (the cache counts them too); :meth:`save` writes them to the caches' folders.
    """

    def __init__(self, trunk: Trunk, store: ModelStore, batch_size: int | None, advance: Callable[[int], None],
                 cancel: CancelCheck | None) -> None:
        self.trunk, self.store, self.batch_size, self.advance, self.cancel = trunk, store, batch_size, advance, cancel
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
            self.seconds += seconds
            session.cache.stats.encoded_slices += encoded
            session.cache.put(session.key, entry)
            self.store.encoded(self.trunk, seconds, encoded)

    def save(self) -> None:
        """Write the features of the volumes encoded to their cache's folder (:meth:`FeatureCache.save`)."""
        for key, session in self.sessions.items():
            session.cache.save(key)
