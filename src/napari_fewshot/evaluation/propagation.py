"""Slice-to-slice propagation of painted masks: how the peers segment a volume from one slice.

A *step* carries a mask ``[H, W]`` from one slice to a neighbouring one:

- :class:`BoxPromptStep`: the box around the mask prompts LiteMedSAM on the next
  slice (the way SAM-family tools propagate);
- :class:`~napari_fewshot.core.registration.SliceRegistration`: the next slice is
  registered to this one (SimpleITK demons, in mm) and the mask is warped along;
- :func:`copy_step`: the mask as it is.

:func:`propagate` walks from every painted slice up and down the volume until
the mask vanishes or it meets the part of the volume nearer another painted slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..core.sam_decoder import BoxDecoder, square_box
from ..core.support import walks_from_painted

#: ``step(mask, source, target) -> mask``: a slice mask on ``source`` carried to slice ``target``.
Step = Callable[[np.ndarray, int, int], np.ndarray]


def propagate(seeds: dict[int, np.ndarray], n_slices: int, step: Step) -> np.ndarray:
    """Masks ``[n_slices, H, W]`` bool grown from the painted slice masks ``seeds`` (slice index -> ``[H, W]``).

    Every slice is reached from its nearest painted slice (the lower one on a tie),
    one step at a time; a walk stops where its mask becomes empty, so the slices
    beyond stay empty.  Painted slices keep their masks.
    """
    shape = np.asarray(next(iter(seeds.values()))).shape
    result = np.zeros((n_slices, *shape), dtype=bool)
    for seed, mask in seeds.items():
        result[seed] = mask
    for seed, targets in walks_from_painted(tuple(seeds), n_slices):
        mask, source = result[seed], seed
        for target in targets:
            mask = np.asarray(step(mask, source, target), dtype=bool)
            if not mask.any():
                break
            result[target], source = mask, target
    return result


def copy_step(mask: np.ndarray, source: int, target: int) -> np.ndarray:
    """The mask unchanged (the copy floor: the painted shape on every slice)."""
    return mask


class BoxPromptStep:
    """The box around the mask prompts LiteMedSAM's decoder on the target slice's cached embedding.

    ``embeddings``: ``[Z, 256, 64, 64]`` (the ``litemedsam`` encoder's trunk features
    of every slice, as the engine caches them); ``pixel_aspect``: row over column spacing.
    """

    def __init__(self, embeddings: torch.Tensor, decoder: BoxDecoder, pixel_aspect: float = 1.0) -> None:
        self.embeddings, self.decoder, self.pixel_aspect = embeddings, decoder, pixel_aspect

    def __call__(self, mask: np.ndarray, source: int, target: int) -> np.ndarray:
        box = square_box(mask, self.pixel_aspect)
        if box is None:
            return np.zeros_like(mask, dtype=bool)
        return self.decoder.decode(self.embeddings[target : target + 1], box, mask.shape, self.pixel_aspect)[0]
