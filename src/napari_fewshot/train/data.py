"""Training volumes: slices on the encoder's grid, their pseudo-labels, and (frozen encoder) trunk features.

Preparing a volume (body mask, superpixels, encoding every slice) costs minutes
on a CPU, so the result is cached in the training run's folder, keyed by the
image's content and every setting that shapes it; the user's data folders are
never written to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.encoders import Encoder
from ..core.features import VolumeFeatures, encode_slices, encoder_fingerprint, pooled
from ..core.preprocess import Preprocessing, normalise_intensities, to_encoder_slices
from ..core.backends import resolve_runtime
from ..core.torch_backend import TorchTrunk
from ..core.user_cache import save_in_cache
from ..io import read_volume
from .pseudolabels import PARAMETERS, body_mask, superpixels, supervoxels

log = logging.getLogger(__name__)

#: Bump when preparation changes, so old cache entries are not reused.
PREPARATION_VERSION = 1
#: Slices whose body covers less than this share of the slice are left out (air above the head, table only).
MIN_BODY_SHARE = 0.02


@dataclass
class TrainingVolume:
    """One prepared volume.

    images : ``[N, S, S]`` float32 in [0, 1], the kept slices on the encoder's square grid.
    labels : ``[N, S, S]`` int32 pseudo-labels (0 outside the body); supervoxel ids are
        shared across slices, superpixel ids only within a slice.
    trunk : ``[N, C, h, w]`` bfloat16 trunk features of those slices, pooled to the head's
        grid (None when the encoder trains too, and features come from the images).
    spacing_mm : distance between kept slices, and the grid's pixel size (rows, columns).
    source : where the image came from, as given.
    key : digest of the image's content and the preparation settings (its cache key).
    """

    images: torch.Tensor
    labels: torch.Tensor
    trunk: torch.Tensor | None
    spacing_mm: tuple[float, float, float]
    source: str
    key: str
    supervoxels: bool


@dataclass(frozen=True)
class PreparationSettings:
    """Everything that shapes a prepared volume besides the image itself."""

    input_size: int
    frozen_trunk: str  # the trunk's fingerprint when features are cached, else ""
    superpixels: str
    supervoxels: bool
    slice_mm: float


def _digest(*parts: object) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part if isinstance(part, memoryview) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors stored at ``path``, computed and stored (atomically) when missing or damaged; where the cache
    cannot hold them (a full disk), one warning line says so and training goes on without it."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors' own errors: a file cut short or not its own
            log.warning("%s: cached training data is damaged (%s); computed again", path, error)
    tensors = compute()
    save_in_cache(path, lambda target: save_file(tensors, str(target)), "prepared training data is not cached on disk",
                  "--cache names another folder")
    return tensors


def kept_slices(body: np.ndarray, slice_spacing: float, slice_mm: float) -> np.ndarray:
    """Slice indices to train on: every ``slice_mm`` millimetres (every slice for 0), from the first to the
    last slice whose body covers ``MIN_BODY_SHARE`` of it."""
    share = body.reshape(len(body), -1).mean(axis=1)
    inside = np.flatnonzero(share >= MIN_BODY_SHARE)
    if inside.size == 0:
        return inside
    step = max(1, round(slice_mm / slice_spacing)) if slice_mm > 0 else 1
    return np.arange(inside[0], inside[-1] + 1, step)


def prepare_volume(
    path: str | Path,
    encoder: Encoder,
    settings: PreparationSettings,
    cache_dir: Path,
    *,
    device: torch.device,
    batch_size: int = 4,
    advance: Callable[[int], None] = lambda n: None,
) -> TrainingVolume:
    """Read, pseudo-label and (with a frozen encoder) encode the image at ``path``.

    Three parts are cached in ``cache_dir``, each under its own key, so that a run
    with other pseudo-labels reuses the (costly) features and the reverse: the
    slices on the encoder grid, their pseudo-labels, their trunk features.
    """
    volume = read_volume(path, kind="image")
    image = volume.data
    spacing = tuple(float(s) for s in volume.geometry.spacing[::-1])  # per array axis (z, y, x)
    preprocessing = Preprocessing.for_volume(image)
    size, pixel_aspect = settings.input_size, spacing[1] / spacing[2]
    grid_mm = max(image.shape[1] * spacing[1], image.shape[2] * spacing[2]) / size
    slices_key = _digest(np.ascontiguousarray(image).view(np.uint8).data, str(image.shape), str(image.dtype),
                         PREPARATION_VERSION, preprocessing.key(), size, float(settings.slice_mm))

    def grid_slices() -> dict[str, torch.Tensor]:
        body = body_mask(image, preprocessing)
        slices = kept_slices(body, spacing[0], settings.slice_mm)
        if slices.size == 0:
            raise ValueError(f"{path}: no slice holds enough body to train on (is it an empty or mask image?)")
        images = to_encoder_slices(normalise_intensities(image[slices], preprocessing), size, pixel_aspect)[:, 0]
        inside = to_encoder_slices(body[slices].astype(np.float32), size, pixel_aspect)[:, 0] > 0.5
        return {"images": images.half(), "inside": inside, "slices": torch.from_numpy(slices)}

    grid = _cached(cache_dir / f"slices-{slices_key}.safetensors", grid_slices)
    slices = grid["slices"].numpy()
    if settings.supervoxels and len(slices) < 2:
        apart = f", at least {settings.slice_mm:g} mm apart" if settings.slice_mm else ""
        raise ValueError(
            f"{path}: only one slice to train on (of its {len(image)}, those holding body{apart}); --supervoxels "
            "takes each query from another slice: give a volume of several slices, a smaller --slice-mm, or train "
            "without --supervoxels"
        )
    slice_mm = spacing[0] * float(slices[1] - slices[0] if len(slices) > 1 else 1)

    def pseudo_labels() -> dict[str, torch.Tensor]:
        images, inside = grid["images"].float().numpy(), grid["inside"].numpy()
        if settings.supervoxels:
            labels = supervoxels(images, inside, (slice_mm, grid_mm, grid_mm))
        else:
            labels = np.stack([superpixels(plane, mask, settings.superpixels) for plane, mask in zip(images, inside)])
        return {"labels": torch.from_numpy(labels)}

    method = "supervoxels" if settings.supervoxels else settings.superpixels
    labels = _cached(cache_dir / f"labels-{_digest(slices_key, method, PARAMETERS)}.safetensors", pseudo_labels)

    def trunk_features() -> dict[str, torch.Tensor]:
        features = VolumeFeatures(len(slices))
        trunk = TorchTrunk(encoder, resolve_runtime("torch", "f32", device))  # training stays in torch
        encode_slices(image[slices], trunk, preprocessing, features, np.arange(len(slices)), pixel_aspect=pixel_aspect,
                      batch_size=batch_size, advance=advance)
        return {"trunk": pooled(features.tensor).to(torch.bfloat16)}

    trunk = None
    if settings.frozen_trunk:
        trunk = _cached(cache_dir / f"trunk-{_digest(slices_key, settings.frozen_trunk)}.safetensors", trunk_features)["trunk"]
    return TrainingVolume(
        images=grid["images"].float(),
        labels=labels["labels"],
        trunk=trunk,
        spacing_mm=(slice_mm, grid_mm, grid_mm),
        source=str(path),
        key=slices_key,
        supervoxels=settings.supervoxels,
    )


def preparation_settings(encoder: Encoder, *, freeze: bool, superpixel_method: str, use_supervoxels: bool,
                    slice_mm: float) -> PreparationSettings:
    """The :class:`PreparationSettings` of a run with ``encoder``."""
    return PreparationSettings(
        input_size=encoder.input_size,
        frozen_trunk=encoder_fingerprint(encoder) if freeze else "",
        superpixels=superpixel_method,
        supervoxels=use_supervoxels,
        slice_mm=slice_mm,
    )
