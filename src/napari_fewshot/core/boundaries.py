"""Boundaries drawn by LiteMedSAM's mask decoder where the prototypes found a structure (the hybrid).

The prototype head says *where* and *whether* a structure is on a slice, but on
its coarse feature grid (32x32 for the whole slice) it draws blocky boundaries
and shrinks small structures.  Here the box around the largest piece of each
slice's prototype mask (look-alikes beside a structure, often caught with it,
would stretch a box around everything) prompts LiteMedSAM's own decoder on the
slice's cached embedding, which draws the boundary.

Both steps are calibrated on the painted slices, where the truth is known:

- **box scale**: the head's prediction of a painted slice from itself against
  the painting: how much larger the painted box is, per axis (1 to
  :data:`MAX_SCALE`); each slice's box is scaled as that of the painted slice
  it takes its support from, plus a margin of
  :data:`MARGIN` pixels of the 256x256 encoder square (within the jitter
  MedSAM's boxes were trained with);
- **trust**, per painted slice: prompted with the box of the painting (its
  largest piece), the decoder must redraw the painting better (Dice) than the
  head predicts it from itself; where it does not (a ring it fills, diffuse
  tissue such as grey matter: a box does not say which of its contents is meant;
  a structure in several pieces), the slices that take their support from that
  painted slice keep the prototype boundaries.  An organ's shape changes along
  its extent (a kidney's pole against its hilum), so one painted slice's verdict
  does not speak for the slices near another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .cancel import CancelCheck, check_cancel
from .sam_decoder import SIZE, BoxDecoder, square_box

#: Which boundaries a segmentation draws: the prototype head's own, or LiteMedSAM's decoder's.
BOUNDARIES = ("prototype", "decoder")
#: The most a box is enlarged per axis by calibration.
MAX_SCALE = 2.0
#: Pixels of the 256x256 encoder square added on every side of a scaled box.
MARGIN = 4.0
#: Slices decoded together.
DECODE_BATCH = 8


@dataclass(frozen=True)
class BoxCalibration:
    """How one structure's prototype boxes are scaled and where the decoder is trusted, per painted slice.

    ``scales``: ``[S, 2]``, the (rows, columns) factor of each painted slice's
    boxes.  ``decoder_dice``, ``prototype_dice``: ``[S]``, how well the decoder
    (from the painting's box) and the head (from the painting itself) redraw each
    painted slice.
    """

    scales: np.ndarray
    decoder_dice: np.ndarray
    prototype_dice: np.ndarray

    @property
    def trusted(self) -> np.ndarray:
        """``[S]`` bool: the painted slices the decoder redraws better than the head."""
        return self.decoder_dice > self.prototype_dice


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected piece of a slice mask ``[H, W]`` bool (empty stays empty)."""
    pieces, count = ndimage.label(mask)
    if count < 2:
        return mask
    return pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))


def _box(mask: np.ndarray, pixel_aspect: float) -> np.ndarray | None:
    return square_box(_largest_piece(mask), pixel_aspect)


def _size(box: np.ndarray) -> np.ndarray:
    """(height, width) of a box ``[x0, y0, x1, y1]`` in pixels (inclusive)."""
    return np.array([box[3] - box[1] + 1, box[2] - box[0] + 1], dtype=np.float64)


def calibrate(
    painted: np.ndarray,
    predicted: np.ndarray,
    embeddings: torch.Tensor,
    decoder: BoxDecoder,
    pixel_aspect: float = 1.0,
) -> BoxCalibration:
    """Calibrate one structure on its painted slices.

    painted, predicted : ``[S, H, W]`` bool, the painting of each painted slice and
        the head's prediction of that slice from itself.
    embeddings : ``[S, 256, 64, 64]``, LiteMedSAM's embeddings of those slices.
    A slice with nothing painted is not trusted.
    """
    boxes = [_box(truth, pixel_aspect) for truth in painted]
    index = [i for i, box in enumerate(boxes) if box is not None]
    scales = np.ones((len(painted), 2))
    decoder_dice, prototype_dice = np.zeros(len(painted)), np.ones(len(painted))
    if index:
        redrawn = decoder.decode(embeddings[index], np.stack([boxes[i] for i in index]), painted.shape[1:], pixel_aspect)
        decoder_dice[index] = [_dice(mask, painted[i]) for mask, i in zip(redrawn, index)]
        prototype_dice[index] = [_dice(predicted[i], painted[i]) for i in index]
    for i in index:
        guessed = _box(predicted[i], pixel_aspect)
        scales[i] = _size(boxes[i]) / _size(guessed) if guessed is not None else MAX_SCALE
    return BoxCalibration(np.clip(scales, 1.0, MAX_SCALE), decoder_dice, prototype_dice)


def prompt_box(mask: np.ndarray, scale: np.ndarray, pixel_aspect: float = 1.0) -> np.ndarray | None:
    """The box ``[x0, y0, x1, y1]`` (encoder square pixels) that prompts the decoder for a prototype mask ``[H, W]``.

    The box of the mask's largest piece scaled about its centre by ``scale``
    (rows, columns), plus :data:`MARGIN`; None when the mask is empty.
    """
    box = _box(mask, pixel_aspect)
    if box is None:
        return None
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    half = (_size(box) * np.asarray(scale))[::-1] / 2 + MARGIN
    return np.clip(np.concatenate([centre - half, centre + half]), 0, SIZE - 1).astype(np.float32)


def draw_boundaries(
    masks: np.ndarray,
    embeddings: torch.Tensor,
    decoder: BoxDecoder,
    scales: np.ndarray,
    pixel_aspect: float = 1.0,
    fixed: np.ndarray | None = None,
    advance: Callable[[int], None] | None = None,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """The decoder's masks ``[Z, H, W]`` bool for a structure's prototype masks ``masks`` ``[Z, H, W]`` bool.

    embeddings : ``[Z, 256, 64, 64]`` of the same slices; scales : ``[Z, 2]``, each
    slice's box scale (:func:`prompt_box`).  Slices where ``fixed`` ``[Z]`` bool is
    True (the painted ones), empty slices and slices whose mask is too small to keep a
    pixel on the encoder's square (no box) are returned as they are.
    ``advance(n)`` is told after each batch of ``n`` slices; ``cancel`` is asked before each.
    """
    drawn = masks.copy()
    drawable = masks.reshape(len(masks), -1).any(axis=1) & (True if fixed is None else ~fixed)
    boxes = {z: prompt_box(masks[z], scales[z], pixel_aspect) for z in np.flatnonzero(drawable)}
    slices = np.array([z for z, box in boxes.items() if box is not None], dtype=int)
    for start in range(0, len(slices), DECODE_BATCH):
        check_cancel(cancel)
        chunk = slices[start : start + DECODE_BATCH]
        boxes_chunk = np.stack([boxes[z] for z in chunk])
        drawn[chunk] = decoder.decode(embeddings[chunk], boxes_chunk, masks.shape[1:], pixel_aspect)
        if advance is not None:
            advance(len(chunk))
    return drawn
