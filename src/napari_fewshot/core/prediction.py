"""The head on cached features: each structure's probability and attention, slice by slice.

A :class:`Predictor` holds what one segmentation's predictions share (the model, the
device, the two volumes' pixel aspects, and how a support is built from painted
slices); :func:`claim` writes each structure's final mask into one label map.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .boundaries import BoxCalibration, calibrate
from .cancel import CancelCheck, check_cancel
from .confidence import similarity_levels
from .model import FewShotModel
from .preprocess import from_encoder_slices, to_encoder_slices
from .progress import RunProgress
from .sam_decoder import BoxDecoder
from .support import assign_supports

if TYPE_CHECKING:
    from .engine import FewShotSession

#: A head batch holds at most this many support-to-query attention entries (Q * S * (h*w)^2).
HEAD_BATCH_ELEMENTS = 2**25


class SupportBuilder(Protocol):
    """How the head's support is made from painted slices: ``build(session, model, features, painted, slices)
    -> (support [S, C, h, w], mask [S, h, w])`` on the session's device.

    ``session``: the :class:`~napari_fewshot.core.engine.FewShotSession` of the volume
    painted on (its volume, spacing, pixel aspect, runtime); ``features``
    ``[Z, C, h', w']``: that volume's cached trunk features; ``painted`` ``[Z, Y, X]``
    bool: the structure's painting; ``slices``: the painted slices to use.
    :func:`painted_support` is the engine's; another (a benchmark's) is given to
    the session as ``build_support``.
    """

    def __call__(self, session: FewShotSession, model: FewShotModel, features: torch.Tensor, painted: np.ndarray,
                 slices: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]: ...


def painted_support(session: FewShotSession, model: FewShotModel, features: torch.Tensor, painted: np.ndarray,
                    slices: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Head features ``[S, C, h, w]`` of the painted ``slices`` and their painting on the head's grid ``[S, h, w]``."""
    index, device = list(slices), session.runtime.device
    support = model.features(features[index].to(device))
    # features are square: the mask goes to their grid as the slices went to the encoder's
    mask = to_encoder_slices(painted[index].astype(np.float32), support.shape[-1], session.aspect)[:, 0].to(device)
    return support, mask


class Predictor:
    """The head of ``model`` on ``device`` for one segmentation: query slices of ``query_aspect`` (pixel aspect)
    from a support painted on the volume of ``support`` (a session), made by ``build_support``."""

    def __init__(self, model: FewShotModel, device: torch.device, query_aspect: float, support: FewShotSession,
                 build_support: SupportBuilder = painted_support) -> None:
        self.model, self.device, self.build_support = model, device, build_support
        self.query_aspect, self.support, self.support_aspect = query_aspect, support, support.aspect

    def structure_maps(
        self, query_features: torch.Tensor, support_features: torch.Tensor, painted: np.ndarray,
        painted_slices: tuple[int, ...], queries: np.ndarray, out: tuple[np.ndarray, np.ndarray], *,
        advance: Callable[[int], None], cancel: CancelCheck | None,
    ) -> None:
        """One structure's probability and attention on the slices ``queries``, written into ``out``
        (two ``[Z, Y, X]`` float32 arrays); each query slice takes its support from its nearest painted slice(s)."""
        probability, attention = out
        query_shape, n_query = probability.shape[1:], len(probability)
        wanted = set(queries.tolist())
        groups = assign_supports(n_query, len(support_features), painted_slices)
        with torch.inference_mode():
            for support_slices, group in groups.items():
                group_queries = [z for z in group if z in wanted]
                if not group_queries:
                    continue
                support, mask = self.build_support(self.support, self.model, support_features, painted,
                                                   support_slices)
                positions = support.shape[-2] * support.shape[-1]
                batch = max(1, HEAD_BATCH_ELEMENTS // (len(support_slices) * positions**2))
                for start in range(0, len(group_queries), batch):
                    check_cancel(cancel)
                    chunk = group_queries[start : start + batch]
                    query = self.model.features(query_features[chunk].to(self.device))
                    maps = self._maps(support, mask, query, query_shape, self.query_aspect)
                    probability[chunk], attention[chunk] = maps[:, 0], maps[:, 1]
                    advance(len(chunk))

    def painted_maps(
        self, support_features: torch.Tensor, painting: np.ndarray, structures: dict[int, tuple[int, ...]],
        n_query: int, threshold: float, decoder: BoxDecoder | None, clock: RunProgress,
    ) -> tuple[dict[int, np.ndarray], dict[int, BoxCalibration]]:
        """What each structure's painted slices tell before any other slice is predicted: per query slice, the
        similarity levels presence is measured on (:func:`similarity_levels`), and, with a ``decoder``, its
        calibration (:func:`calibrate`: whether and how to trust it), whose time tells ``clock`` drawing's rate.

        ``painting`` ``[Z, Y, X]``: the support labels; ``structures``: each value's painted slices."""
        levels, calibrations = {}, {}
        n_support = len(support_features)
        for value, support_slices in structures.items():
            painted_value = painting == value
            masks = painted_value[list(support_slices)]
            own = self._own_maps(support_features, painted_value, support_slices)
            levels[value] = per_query(similarity_levels(own[:, 1], masks), n_query, n_support, support_slices)
            if decoder is not None:
                started = time.perf_counter()
                calibrations[value] = calibrate(masks, own[:, 0] > threshold, support_features[list(support_slices)],
                                                decoder, self.support_aspect)
                clock.sample("draw", time.perf_counter() - started, len(support_slices))
        return levels, calibrations

    def _own_maps(self, support_features: torch.Tensor, painted: np.ndarray, slices: tuple[int, ...]) -> np.ndarray:
        """Probability and attention ``[S, 2, H, W]`` float32 of each painted slice predicted by the head from itself.

        ``support_features`` ``[Z, C, h, w]`` are the encoder's; ``painted`` ``[Z, H, W]``
        bool, the structure's painting.  Where the truth is known, these calibrate the
        decoder (:func:`~napari_fewshot.core.boundaries.calibrate`) and set the scale of presence.
        """
        shape = painted.shape[1:]
        with torch.inference_mode():
            support, mask = self.build_support(self.support, self.model, support_features, painted, slices)
            return np.concatenate([
                self._maps(support[i : i + 1], mask[i : i + 1], support[i : i + 1], shape, self.support_aspect)
                for i in range(len(slices))
            ])

    def _maps(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, shape: tuple[int, int],
              aspect: float) -> np.ndarray:
        """Foreground probability and attention ``[Q, 2, H, W]`` float32 of head features ``query`` on the slice
        grid ``shape``."""
        output = self.model.head(support, mask, query)
        maps = torch.stack([output.logits.softmax(dim=1)[:, 1], output.attention], dim=1)
        return from_encoder_slices(maps, shape, aspect).cpu().numpy()


def per_query(values: np.ndarray, n_query: int, n_support: int, painted: tuple[int, ...]) -> np.ndarray:
    """``[n_query, ...]``: for each query slice, the mean of ``values`` ``[S, ...]`` (one row per painted
    slice) over the painted slice(s) it takes its support from."""
    row = {z: i for i, z in enumerate(painted)}
    spread = np.zeros((n_query, *values.shape[1:]))
    for support_slices, group in assign_supports(n_query, n_support, painted).items():
        spread[group] = values[[row[z] for z in support_slices]].mean(axis=0)
    return spread


def claim(labels: np.ndarray, best: np.ndarray, value: int, mask: np.ndarray, probability: np.ndarray) -> None:
    """Structure ``value``'s ``mask`` ``[Z, Y, X]`` bool written into ``labels`` in place, where no structure is yet
    or where its ``probability`` exceeds that of the structure there (``best``, float32, updated): claimed in
    turn by every structure, each voxel goes to the most probable structure that holds it."""
    wins = mask & ((labels == 0) | (probability > best))
    labels[wins] = value
    best[wins] = probability[wins]
