"""Apply a refined model (``napari-fewshot refine``, PCCS) to a scan: a 2D U-Net over every slice.

A refined model file is a safetensors file of the U-Net's tensors with a card in
its metadata (and beside it as JSON): the label values of its classes, the
modality and input size it was trained on, and how it was trained.  Loading
never runs code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cancel import CancelCheck, check_cancel
from .device import resolve_device
from .errors import SegmentationError
from .intensity import MODALITIES, Modality, guess_modality
from .model import ModelFileError, load_checked_state, read_tensor_file
from .postprocess import largest_per_structure
from .preprocess import Preprocessing, from_encoder_slices, normalise_intensities, slice_aspect, to_encoder_slices
from .unet import UNet

#: The card's ``format`` field of a refined model.
REFINED_FORMAT = "napari-fewshot-refined/1"
#: The model file inside a refine run's folder.
REFINED_FILE = "model.safetensors"
#: The largest label value a refined model can give (its labels are uint8, or uint16 above 255).
MAX_LABEL = 65535
#: The largest square a refined model's slices are resized to (it holds every slice at that size in memory).
MAX_SIZE = 1024


def model_input(volume: np.ndarray, preprocessing: Preprocessing, size: int, pixel_aspect: float) -> torch.Tensor:
    """The slices of ``volume`` ``[Z, H, W]`` (file units) as network input ``[Z, 1, size, size]`` in [0, 1]."""
    return to_encoder_slices(normalise_intensities(volume, preprocessing), size, pixel_aspect)[:, :1].contiguous()


def load_refined(path: str | Path) -> tuple[UNet, dict[str, Any]]:
    """The U-Net and card of a refined model: its file, or the run folder holding ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / REFINED_FILE
    state, card = read_tensor_file(path, REFINED_FORMAT, "napari-fewshot refine")
    problem = _card_problem(card, state.get("segmentation.weight"))
    if problem:
        raise ModelFileError(f"{path}: its card is damaged ({problem}); refine the model again")
    network = UNet(len(card["values"]) + 1)
    load_checked_state(network, state, str(path), "a refined U-Net", "refine the model again", complete=True)
    return network.eval(), card


def _card_problem(card: dict[str, Any], head: torch.Tensor | None) -> str | None:
    """What is wrong with a refined model's ``card`` (its label values, size and modality), also against the
    weights of its segmentation ``head`` (one output channel per class), before anything is allocated; or None."""
    values, size, modality = card.get("values"), card.get("size"), card.get("modality")
    if not isinstance(values, list) or not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_LABEL for v in values
    ) or len(set(values)) < len(values):
        shown = f"{values[:5]} and {len(values) - 5} more" if isinstance(values, list) and len(values) > 5 else values
        return f"label values {shown}: not distinct whole numbers from 1 to {MAX_LABEL}"
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= MAX_SIZE or size % 16:
        return f"size {size}: not a multiple of 16 from 16 to {MAX_SIZE}"
    if modality not in MODALITIES:
        return f"modality {modality}: not one of {', '.join(MODALITIES)}"
    if head is not None and tuple(head.shape[:1]) != (len(values) + 1,):
        return (f"{len(values)} label values, but its weights' segmentation layer has shape {tuple(head.shape)} "
                "(one output per structure and one for the background)")
    return None


def segment_with_model(
    image: np.ndarray,
    model: str | Path,
    *,
    spacing: tuple[float, float, float] | None = None,
    axis: int = 0,
    modality: Modality | None = None,
    device: str | torch.device = "auto",
    keep: str = "largest",
    batch_size: int = 16,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Labels ``[Z, Y, X]`` (``image``'s shape and axis order) of every slice of ``image`` by a refined model.

    image : intensities in file units; spacing : mm per array axis (pixel aspect);
    modality : the scan's; detected when None, and refused when it is not the
    model's.  keep : ``largest`` keeps each structure's largest 3D component (a
    2D network finds look-alikes on slices far from the organ), ``all`` keeps
    everything.  Values are the label values the model was refined on (uint8, or
    uint16 above 255).
    """
    if keep not in ("largest", "all"):
        raise SegmentationError(f"keep must be 'largest' or 'all' for a refined model; got '{keep}'")
    if np.ndim(image) != 3 or axis not in (0, 1, 2):
        raise SegmentationError(f"the image must be a 3D volume and axis 0, 1 or 2; got {np.ndim(image)} dimensions, "
                                f"axis {axis}")
    network, card = load_refined(model)
    volume = np.moveaxis(np.asarray(image), axis, 0)
    found = modality or guess_modality(volume)
    if found != card["modality"]:
        raise SegmentationError(
            f"the model was refined on {card['modality']} but this scan looks {found}; "
            f"apply it to {card['modality']} scans, or pass modality='{card['modality']}' if the detection is wrong"
        )
    aspect = slice_aspect(spacing, axis)
    slices = model_input(volume, Preprocessing(card["modality"]), int(card["size"]), aspect)
    labels = predict_slices(network, slices, volume.shape[1:], aspect, card["values"], resolve_device(device),
                            batch_size, cancel)
    return np.moveaxis(largest_per_structure(labels) if keep == "largest" else labels, 0, axis)


def predict_slices(
    network: UNet,
    slices: torch.Tensor,
    shape: tuple[int, int],
    aspect: float,
    values: list[int],
    device: torch.device,
    batch_size: int = 16,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Labels ``[Z, *shape]`` of network input ``slices`` ``[Z, 1, S, S]`` (:func:`model_input`) on the slice grid.

    ``values``: the label value of each class after the background (uint8 labels, or uint16 above 255).
    """
    network.to(device).eval()
    lookup = np.array([0, *values], dtype=np.uint8 if max(values) < 256 else np.uint16)
    labels = np.zeros((len(slices), *shape), dtype=lookup.dtype)
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            check_cancel(cancel)
            logits, _ = network(slices[start : start + batch_size].to(device))
            probability = from_encoder_slices(logits.softmax(dim=1).float(), shape, aspect)
            labels[start : start + batch_size] = lookup[probability.argmax(dim=1).cpu().numpy()]
    return labels
