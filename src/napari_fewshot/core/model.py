"""What training changes, and the file it is kept in.

A :class:`FewShotModel` is an encoder followed by a head.  Training with a frozen
encoder changes only the encoder's 1x1 reduction and the head's parameters
(DSPNet's BCMA); training the whole encoder changes its trunk too.  A model file
is a safetensors file holding those tensors, with a card (what it was trained
from, how, by which code) in the file's own metadata and beside it as JSON.
Loading never runs code from the file.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .encoders import Encoder
from .errors import SegmentationError
from .features import head_features
from .heads import Head, HeadOutput

#: The card's ``format`` field: what a napari-fewshot few-shot model file says it is.
MODEL_FORMAT = "napari-fewshot-model/1"
#: ``weights=`` values that mean "no trained weights" and "the model shipped for this encoder".
UNTRAINED, DEFAULT = "none", "default"


class ModelFileError(SegmentationError):
    """A model file that cannot be used: missing, corrupt, or made for another encoder."""


class FewShotModel(nn.Module):
    """An encoder's trunk, a 1x1 reduction and a head: ``forward(support, mask, query) -> HeadOutput``.

    The reduction starts as a copy of the encoder's own, so the encoder object
    (shared by every model built on it) is never changed by training or loading.
    ``support`` ``[S, ...]`` and ``query`` ``[Q, ...]`` are slices ``[N, 3, size, size]``
    in [0, 1] when ``from_trunk`` is False, else cached trunk features
    ``[N, C_trunk, h, w]``; ``mask`` ``[S, h', w']`` in [0, 1] on the head's grid.
    """

    def __init__(self, encoder: Encoder, head: Head) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.reduce = copy.deepcopy(encoder.reduce).requires_grad_(True)
        encoder.reduce.requires_grad_(False)

    def features(self, x: torch.Tensor, from_trunk: bool = True) -> torch.Tensor:
        """Head input ``[N, 256, <=32, <=32]`` float32 from slices or from trunk features."""
        trunk = x if from_trunk else self.encoder.trunk(x)
        return head_features(trunk, self.reduce, x.device)

    def forward(
        self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, from_trunk: bool = True
    ) -> HeadOutput:
        return self.head(self.features(support, from_trunk), mask, self.features(query, from_trunk))

    def trained_state(self, with_trunk: bool) -> dict[str, torch.Tensor]:
        """What a model file keeps: ``reduce.*`` and ``head.*``, plus the trunk's ``encoder.*`` when it was trained."""
        return {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith("encoder.") or (with_trunk and not name.startswith("encoder.reduce."))
        }

    def load_trained_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load what :meth:`trained_state` gave; see :func:`load_checked_state` for what is refused."""
        load_checked_state(self, state, source, f"the '{self.encoder.name}' encoder and '{self.head.name}' head",
                           "use a model trained with them, or weights='none'", complete=False)


def load_checked_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, fix: str,
                       *, complete: bool) -> None:
    """Load tensors read from a file into ``module``, or :class:`ModelFileError` saying why they do not fit.

    Parameters
    ----------
    module : the network to load into.
    state : the file's tensors by name.
    source : the file, for the message.
    what : the network, for the message (e.g. ``"the 'tiny' encoder and 'alpnet' head"``).
    fix : what the user can do, for the message.
    complete : whether ``state`` must hold every tensor of ``module`` (else a part of it).

    Refused: tensors ``module`` lacks (or, when ``complete``, lacks of its own), of
    other shapes, whole numbers where it holds real ones, and NaN or infinite values
    (a diverged training), which would load silently and predict nothing.
    """
    own = module.state_dict()
    common = set(state) & set(own)
    problems = {
        "unknown tensors": sorted(set(state) - set(own)),
        "missing tensors": sorted(set(own) - set(state)) if complete else [],
        "other shapes": sorted(name for name in common if state[name].shape != own[name].shape),
        "whole numbers for real weights": sorted(
            name for name in common if own[name].is_floating_point() and not state[name].is_floating_point()
        ),
    }
    found = {kind: names for kind, names in problems.items() if names}
    if found:
        detail = "; ".join(f"{kind}: {', '.join(names[:3])}" for kind, names in found.items())
        raise ModelFileError(f"{source} does not fit {what} ({detail}); {fix}")
    diverged = sorted(name for name in common if state[name].is_floating_point() and not state[name].isfinite().all())
    if diverged:
        raise ModelFileError(
            f"{source} holds NaN or infinite weights ({', '.join(diverged[:3])}): its training diverged or the file "
            f"is damaged, and it would predict nothing; {fix}"
        )
    module.load_state_dict(state, strict=False)


def save_model(path: str | Path, model: FewShotModel, card: dict[str, Any], *, with_trunk: bool) -> Path:
    """Write ``model``'s trained tensors and ``card`` to ``path`` (``.safetensors``) and the card to ``.json`` beside."""
    card = {"format": MODEL_FORMAT, "encoder": model.encoder.name, "head": model.head.name,
            "trained_trunk": with_trunk, **card}
    return write_tensor_file(path, model.trained_state(with_trunk), card)


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and card of a model file, or :class:`ModelFileError` saying what is wrong with it."""
    return read_tensor_file(path, MODEL_FORMAT, "napari-fewshot train")


def write_tensor_file(path: str | Path, state: dict[str, torch.Tensor], card: dict[str, Any]) -> Path:
    """Write ``state`` with ``card`` in its metadata to ``path`` (safetensors) and ``card`` to ``.json`` beside.

    Both files are written atomically (a temporary file renamed), so an
    interrupted write never leaves a half file where a model was.
    """
    from safetensors.torch import save_file

    from ..io.write import atomic_write, write_sidecar

    path = Path(path)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    atomic_write(path, lambda target: save_file(state, str(target), metadata={"card": json.dumps(card)}))
    write_sidecar(path, card)
    return path


def read_tensor_file(path: str | Path, format: str, written_by: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and card of a safetensors file whose card's ``format`` is ``format``, or :class:`ModelFileError`.

    ``written_by``: the command that writes such files, for the message.  Reading runs no code.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}; give the .safetensors file that '{written_by}' wrote")
    try:
        with safe_open(str(path), framework="pt") as file:
            card = json.loads((file.metadata() or {}).get("card", "null"))
            state = {name: file.get_tensor(name) for name in file.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        raise ModelFileError(f"{path} is not a readable model file ({error}); train it again or use another") from error
    if not isinstance(card, dict) or card.get("format") != format:
        raise ModelFileError(f"{path} is a safetensors file but not a {format} model; give one that '{written_by}' wrote")
    return state, card


def packaged_model(encoder: str, head: str) -> Path | None:
    """The model shipped inside the package for ``encoder`` and ``head`` (``models/<encoder>-<head>.safetensors``), if any."""
    path = Path(str(resources.files("napari_fewshot") / "models" / f"{encoder}-{head}.safetensors"))
    return path if path.is_file() else None


def model_source(weights: str | Path | None, encoder: str, head: str) -> Path | None:
    """The model file ``weights`` names: None for untrained, the one shipped for ``encoder`` and ``head`` for ``default``."""
    if weights is None or weights == UNTRAINED:
        return None
    if weights == DEFAULT:
        return packaged_model(encoder, head)
    return Path(weights)


def apply_model_file(model: FewShotModel, state: dict[str, torch.Tensor], card: dict[str, Any], path: Path) -> None:
    """Load the tensors and card :func:`read_model` gave for ``path`` into ``model``.

    A file made for another encoder is refused.  The trained reduction serves
    every head; the head's own tensors load when it was trained with this head.
    """
    if card.get("encoder") != model.encoder.name:
        raise ModelFileError(
            f"{path} was trained for the '{card.get('encoder')}' encoder, not '{model.encoder.name}'; "
            f"pass encoder='{card.get('encoder')}' or another model"
        )
    if card.get("head") != model.head.name:
        state = {name: tensor for name, tensor in state.items() if not name.startswith("head.")}
    model.load_trained_state(state, str(path))
