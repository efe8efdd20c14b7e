"""Encoding a volume once: features of every slice, cached by content, encoder and preprocessing.

Features are computed in batches (memory stays bounded by the batch, plus the
cached result), stored on the CPU in bfloat16 (half of float32), and looked up
by :func:`feature_key`, so a new support re-runs only the head.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .cancel import CancelCheck, cancellable, check_cancel
from .device import is_out_of_memory
from .encoders import Encoder
from .errors import SegmentationError
from .preprocess import Preprocessing, intensity_window, normalise_intensities, to_encoder_slices

log = logging.getLogger(__name__)

#: How cached features are stored.
CACHE_DTYPE = torch.bfloat16
#: The cache keeps at most this many bytes of features (least recently used go first).
DEFAULT_CACHE_BYTES = 4 * 2**30

_fingerprints: weakref.WeakKeyDictionary[Encoder, str] = weakref.WeakKeyDictionary()


@dataclass
class CacheStats:
    """What a :class:`FeatureCache` did: slices encoded, lookups that hit or missed."""

    encoded_slices: int = 0
    hits: int = 0
    misses: int = 0


class FeatureCache:
    """Features of whole volumes ``[N, C, h, w]`` on the CPU, least recently used dropped first."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self._entries.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> torch.Tensor | None:
        features = self._entries.get(key)
        if features is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._entries.move_to_end(key)
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        """Keep ``features``; older entries go while the total exceeds ``max_bytes`` (the newest stays)."""
        self._entries[key] = features
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def encoder_fingerprint(encoder: Encoder) -> str:
    """A digest of ``encoder``'s name and weights (computed once per encoder object)."""
    if encoder not in _fingerprints:
        digest = hashlib.blake2b(encoder.name.encode(), digest_size=16)
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        _fingerprints[encoder] = digest.hexdigest()
    return _fingerprints[encoder]


def feature_key(volume: np.ndarray, encoder: Encoder, preprocessing: Preprocessing, pixel_aspect: float) -> str:
    """The cache key of ``volume``'s features: its content, the encoder's weights, the preprocessing."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{volume.shape}{volume.dtype}".encode())
    digest.update(np.ascontiguousarray(volume).view(np.uint8).data)
    return f"{digest.hexdigest()}:{encoder_fingerprint(encoder)}:{preprocessing.key()}:{pixel_aspect:.6g}"


def encode_volume(
    volume: np.ndarray,
    encoder: Encoder,
    preprocessing: Preprocessing,
    *,
    pixel_aspect: float = 1.0,
    device: torch.device,
    batch_size: int,
    advance: Callable[[int], None] = lambda n: None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Features of every slice of ``volume`` ``[N, H, W]`` (file units): ``[N, C, h, w]`` bfloat16 on the CPU.

    Slices go through the encoder ``batch_size`` at a time; ``advance(n)`` is
    called after each batch of ``n`` slices.  When the device runs out of memory
    the batch is halved and tried again, down to one slice.
    """
    window = intensity_window(volume, preprocessing)
    result: torch.Tensor | None = None  # allocated once the first batch shows the feature shape
    start = 0
    with torch.inference_mode(), cancellable(encoder, cancel):
        while start < len(volume):
            check_cancel(cancel)
            stop = min(start + batch_size, len(volume))
            slices = normalise_intensities(volume[start:stop], preprocessing, window)
            try:
                features = encoder(to_encoder_slices(slices, encoder.input_size, pixel_aspect).to(device))
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if batch_size == 1:
                    raise SegmentationError(
                        f"{device} ran out of memory encoding one slice with '{encoder.name}'; "
                        "free memory on the device or use device='cpu'"
                    ) from error
                batch_size //= 2
                log.warning("%s ran out of memory; encoding %d slices at a time", device, batch_size)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if result is None:
                result = torch.empty((len(volume), *features.shape[1:]), dtype=CACHE_DTYPE)
            result[start:stop] = features.to("cpu", CACHE_DTYPE)
            advance(stop - start)
            start = stop
    assert result is not None, "a volume has at least one slice"
    return result

