"""Encoding a volume once: features of its slices, cached by content, encoder and preprocessing.

What is cached is the encoder's trunk output, before its 1x1 reduction: the
reduction is what a trained model changes, so a new model (like a new support)
re-runs only the cheap part.  Features are computed in batches (memory stays bounded by the batch, plus the
cached result), stored on the CPU in bfloat16 (half of float32), and looked up
by :func:`feature_key`, so a new support re-runs only the head.  A volume's
entry fills slice by slice: a one-slice preview encodes that slice (and the
support's), and a later whole-volume run encodes only the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .cancel import CancelCheck, check_cancel
from .device import is_out_of_memory
from .encoders import Encoder
from .errors import SegmentationError
from .preprocess import Preprocessing, intensity_window, normalise_intensities, to_encoder_slices
from .runtime import Trunk
from .user_cache import CACHE_ENV, cache_writable, save_in_cache, user_cache_folder

log = logging.getLogger(__name__)

#: How cached features are stored.
CACHE_DTYPE = torch.bfloat16
#: Features larger than this are average-pooled to it before the head (the reference 32x32).
HEAD_GRID = 32
#: The cache keeps at most this many bytes of features (least recently used go first).
DEFAULT_CACHE_BYTES = 4 * 2**30
#: A cache's folder holds at most this many bytes of features (least recently used files go first).
DEFAULT_DISK_BYTES = 8 * 2**30
#: What a warning says when features cannot be saved in a cache's folder.
NOT_CACHED = "features are not cached on disk"

_fingerprints: weakref.WeakKeyDictionary[Encoder, str] = weakref.WeakKeyDictionary()


@dataclass
class CacheStats:
    """What a :class:`FeatureCache` did: slices encoded, lookups that hit or missed."""

    encoded_slices: int = 0
    hits: int = 0
    misses: int = 0


class VolumeFeatures:
    """The features of one volume's slices, filled in as slices are encoded.

    ``tensor``: ``[N, C, h, w]`` bfloat16 on the CPU, allocated when the first
    slice is encoded (None before); ``encoded``: ``[N]`` bool, the slices it holds;
    ``saved``: how many of them the cache's folder holds.
    """

    def __init__(self, n_slices: int) -> None:
        self.tensor: torch.Tensor | None = None
        self.encoded = np.zeros(n_slices, dtype=bool)
        self.saved = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.tensor is None else self.tensor.numel() * self.tensor.element_size()

    def missing(self, slices: np.ndarray) -> np.ndarray:
        """The slices among ``slices`` (indices) that are not encoded yet, in order."""
        slices = np.unique(np.asarray(slices, dtype=int))
        return slices[~self.encoded[slices]]


class FeatureCache:
    """:class:`VolumeFeatures` of recently used volumes on the CPU, least recently used dropped first.

    With a ``folder`` (a path, or a function giving one when the cache is used),
    :meth:`save` writes a volume's encoded slices there (one safetensors file per
    key, written whole or not at all, tensors only: reading runs no code), and a
    later process that asks for the same key reads them back instead of encoding.
    The folder holds at most ``max_disk_bytes``; the files least recently used go
    first.  A damaged file (unreadable, or features of another shape or type) is
    said in a warning, removed, and its slices encoded again.  The folder only
    saves time: where it cannot be written (a file in its place, read-only, a full
    disk) one warning line says so, with ``advice`` on another folder, and the
    features stay in memory (a read-only folder is still read).
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        folder: Path | str | Callable[[], Path] | None = None,
        max_disk_bytes: int = DEFAULT_DISK_BYTES,
        advice: str = "",
    ) -> None:
        self.max_bytes, self.max_disk_bytes, self.advice = max_bytes, max_disk_bytes, advice
        self._folder = folder
        self.stats = CacheStats()
        self._entries: OrderedDict[str, VolumeFeatures] = OrderedDict()

    @property
    def folder(self) -> Path | None:
        """Where features are saved, or None (memory only); settable like the constructor's ``folder``."""
        if self._folder is None:
            return None
        return Path(self._folder() if callable(self._folder) else self._folder)

    @folder.setter
    def folder(self, folder: Path | str | Callable[[], Path] | None) -> None:
        self._folder = folder

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> VolumeFeatures | None:
        """The features of ``key``, from memory or the folder; ``shape``: ``(slices, *one slice's features)``
        they must have (a file holding others is damaged).  When the folder lacks them, whether it could hold
        them is asked now (:func:`~napari_fewshot.core.user_cache.cache_writable`), so that a warning comes
        before the work, not after it."""
        features = self._entries.get(key)
        if features is None and (features := self._read(key, shape)) is not None:
            self.put(key, features)
        if features is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._entries.move_to_end(key)
        return features

    def put(self, key: str, features: VolumeFeatures) -> None:
        """Keep ``features``; older entries go while the total exceeds ``max_bytes`` (the newest stays)."""
        self._entries[key] = features
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    def save(self, key: str) -> None:
        """Write the slices ``key`` holds to the folder, when there is one and it lacks some of them; then drop
        the least recently used files while the folder holds more than ``max_disk_bytes``."""
        path, features = self._path(key), self._entries.get(key)
        if path is None or features is None or features.tensor is None or features.saved == features.encoded.sum():
            return
        slices = np.flatnonzero(features.encoded)
        stored = {"features": features.tensor[torch.from_numpy(slices)].contiguous(), "slices": torch.from_numpy(slices)}
        metadata = {"key": key, "n_slices": str(len(features.encoded))}
        if save_in_cache(path, lambda target: save_file(stored, str(target), metadata), NOT_CACHED, self.advice):
            features.saved = len(slices)
            self._trim_folder(keep=path)

    def clear(self) -> None:
        """Forget the volumes held in memory (files in the folder stay)."""
        self._entries.clear()

    def _path(self, key: str) -> Path | None:
        folder = self.folder
        if folder is None:
            return None
        return folder / f"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}.safetensors"

    def _read(self, key: str, shape: tuple[int, ...] | None) -> VolumeFeatures | None:
        """The features of ``key`` from the folder, when a file there holds them under that key (see :meth:`get`)."""
        path = self._path(key)
        if path is None:
            return None
        if not path.is_file():
            cache_writable(path, NOT_CACHED, self.advice)  # what is encoded next could not be saved: said now
            return None
        try:
            with safe_open(str(path), framework="pt") as stored:
                metadata = stored.metadata() or {}
                if metadata.get("key") != key:
                    return None
                tensor = stored.get_tensor("features")
                slices = stored.get_tensor("slices").numpy() if "slices" in stored.keys() else np.arange(len(tensor))
            n_slices = int(metadata.get("n_slices", len(tensor)))
            if len(slices) != len(tensor) or (len(slices) and not 0 <= slices.min() <= slices.max() < n_slices):
                raise ValueError(f"{len(tensor)} slices of features for slice numbers {slices.tolist()[:5]}...")
            found = (n_slices, *tensor.shape[1:])
            if tensor.dtype != CACHE_DTYPE or (shape is not None and found != tuple(shape)):
                wanted = f" of shape {tuple(shape)}" if shape is not None else ""
                raise ValueError(f"{tensor.dtype} features of shape {found}; this scan's are {CACHE_DTYPE}{wanted}")
        except FileNotFoundError:  # removed by another process meanwhile
            return None
        except Exception as error:  # safetensors' own errors, or numbers that do not hold together
            log.warning("%s: cached features are damaged (%s); removed, the slices are encoded again", path, error)
            with contextlib.suppress(OSError):  # a read-only folder keeps it; the new features stay in memory
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # a read-only folder keeps its files' times
            os.utime(path)  # recently used
        features = VolumeFeatures(n_slices)
        features.tensor = torch.empty((n_slices, *tensor.shape[1:]), dtype=CACHE_DTYPE)
        features.tensor[torch.from_numpy(slices)] = tensor
        features.encoded[slices] = True
        features.saved = len(slices)
        return features

    def _trim_folder(self, keep: Path) -> None:
        """Remove the least recently used files (never ``keep``) while the folder exceeds ``max_disk_bytes``."""
        files = []
        for file in keep.parent.glob("*.safetensors"):
            try:
                status = file.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            files.append((status.st_mtime, status.st_size, file))
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, file in files:
            if total <= self.max_disk_bytes:
                break
            if file != keep:
                with contextlib.suppress(OSError):  # a file this user may not remove stays
                    file.unlink(missing_ok=True)
                    total -= size


#: Features of recently segmented volumes, shared by every session made without a cache, and saved in the
#: user's cache folder (``features/``), so that a scan segmented before is not encoded again.
DEFAULT_CACHE = FeatureCache(
    folder=lambda: user_cache_folder("features"),
    advice=f"set {CACHE_ENV} to a writable folder, or keep features in memory only: --no-disk-cache, "
    "cache=FeatureCache() in Python",
)


def state_digest(tensors: Iterable[tuple[str, torch.Tensor]], name: str) -> str:
    """A digest of ``name`` and the named ``tensors`` (a state dict's items): their names and bytes."""
    digest = hashlib.blake2b(name.encode(), digest_size=16)
    for key, tensor in tensors:
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_fingerprint(encoder: Encoder) -> str:
    """A digest of ``encoder``'s name and trunk weights (computed once per encoder object).

    The 1x1 reduction is left out: cached features are the trunk's.
    """
    if encoder not in _fingerprints:
        trunk = ((name, tensor) for name, tensor in encoder.state_dict().items() if not name.startswith("reduce."))
        _fingerprints[encoder] = state_digest(trunk, encoder.name)
    return _fingerprints[encoder]


def feature_key(
    volume: np.ndarray, encoder: Encoder, preprocessing: Preprocessing, pixel_aspect: float, tag: str = ""
) -> str:
    """The cache key of ``volume``'s features: its content, the encoder's weights, the preprocessing, and
    ``tag`` (the runtime's :attr:`~napari_fewshot.core.runtime.Runtime.feature_tag`: its precision below float32)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{volume.shape}{volume.dtype}".encode())
    digest.update(np.ascontiguousarray(volume).view(np.uint8).data)
    return f"{digest.hexdigest()}:{encoder_fingerprint(encoder)}:{preprocessing.key()}:{pixel_aspect:.6g}{tag}"


def encode_slices(
    volume: np.ndarray,
    trunk: Trunk,
    preprocessing: Preprocessing,
    features: VolumeFeatures,
    slices: np.ndarray,
    *,
    pixel_aspect: float = 1.0,
    window: tuple[float, float] | None = None,
    batch_size: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
    cancel: CancelCheck | None = None,
) -> int:
    """Encode the slices of ``volume`` ``[N, H, W]`` (file units) listed in ``slices`` into ``features``.

    ``trunk``: an encoder's trunk on its runtime (:func:`~napari_fewshot.core.runtime.trunk_runner`);
    ``features`` receives its output ``[N, trunk_channels, h, w]`` (the 1x1 reduction
    is applied later, by :func:`head_features`).

    Slices already in ``features`` are skipped; the others go through the trunk
    ``batch_size`` at a time (default: the trunk's own ``batch_size()``), and
    ``advance(n)`` is called after each batch of ``n`` slices.  A cancelled run keeps
    the batches it finished.  When the device runs out of memory the batch is halved
    and tried again, down to one slice.  The intensity window is the whole volume's
    (``window``, from :func:`~napari_fewshot.core.preprocess.intensity_window`, when the
    caller has it already), so features do not depend on which slices are encoded
    together.  Returns the number of slices encoded.
    """
    todo = features.missing(slices)
    if not len(todo):
        return 0
    window = window or intensity_window(volume, preprocessing)
    device = trunk.runtime.device
    batch_size = batch_size or trunk.batch_size()
    start = 0
    while start < len(todo):
        check_cancel(cancel)
        batch = todo[start : start + batch_size]
        normalised = normalise_intensities(volume[batch], preprocessing, window)
        try:
            encoded = trunk(to_encoder_slices(normalised, trunk.input_size, pixel_aspect), cancel)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise SegmentationError(
                    f"{device} ran out of memory encoding one slice with '{trunk.runtime}'; "
                    "free memory on the device or use device='cpu'"
                ) from error
            batch_size //= 2
            log.warning("%s ran out of memory; encoding %d slices at a time", device, batch_size)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if features.tensor is None:
            features.tensor = torch.empty((len(volume), *encoded.shape[1:]), dtype=CACHE_DTYPE)
        features.tensor[torch.from_numpy(batch)] = encoded.to("cpu", CACHE_DTYPE)
        features.encoded[batch] = True
        advance(len(batch))
        start += len(batch)
    return len(todo)


def pooled(trunk_features: torch.Tensor) -> torch.Tensor:
    """Trunk features ``[N, C, h, w]`` average-pooled to at most ``HEAD_GRID`` per side, as float32."""
    features = trunk_features.float()
    height, width = features.shape[-2:]
    if height > HEAD_GRID or width > HEAD_GRID:
        features = F.adaptive_avg_pool2d(features, (min(HEAD_GRID, height), min(HEAD_GRID, width)))
    return features


def head_features(trunk_features: torch.Tensor, reduce: nn.Module, device: torch.device) -> torch.Tensor:
    """Cached trunk features ``[N, C_trunk, h, w]`` as head input ``[N, 256, <=32, <=32]`` float32 on ``device``.

    Pooling and the 1x1 reduction are both linear, so pooling first (cheaper) gives
    what reducing the full grid and then pooling would.
    """
    return reduce(pooled(trunk_features.to(device)))
