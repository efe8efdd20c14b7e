"""The models a process has loaded, kept in one object a session is given.

Building LiteMedSAM's encoder, converting its trunk for OpenVINO or loading the box
decoder takes seconds; every session on the same settings shares them through a
:class:`ModelStore`.  The store also remembers how fast each trunk encoded, so a
run can estimate its time before it has encoded a slice.  :data:`DEFAULT_STORE` is
the one :func:`~napari_fewshot.core.engine.segment` uses unless given another.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backends import trunk_runner
from .encoders import Encoder, EncoderUnavailable, build_encoder
from .errors import SegmentationError
from .heads import Head, build_head
from .model import FewShotModel, apply_model_file, model_source, read_model
from .runtime import Runtime, Trunk
from .sam_decoder import BoxDecoder


class ModelStore:
    """Encoders (one per name, device and trained trunk), their trunks on a runtime, LiteMedSAM's box decoder per
    runtime, and the seconds and slices each trunk encoded."""

    def __init__(self) -> None:
        self._encoders: dict[tuple[str, str, str], Encoder] = {}
        self._trunks: dict[tuple[int, Runtime], Trunk] = {}
        self._decoders: dict[Runtime, BoxDecoder] = {}
        self._encoded: dict[Trunk, list[float]] = {}

    def model(self, encoder: str, head: str, weights: str | Path | None,
              device: torch.device) -> tuple[FewShotModel, str, bool]:
        """The encoder and head with the trained ``weights`` (see :func:`~napari_fewshot.core.engine.segment`),
        where those came from (a path, or ``none``), and whether they changed the encoder's trunk."""
        source = model_source(weights, encoder, head)
        state, card = read_model(source) if source is not None else ({}, {})
        # a trained trunk gets an encoder object of its own; the shared one keeps its pretrained weights
        trunk = str(source.resolve()) if card.get("trained_trunk") else ""
        model = FewShotModel(self.encoder(encoder, device, trunk), _head(head, device)).to(device).eval()
        if source is None:
            return model, "none", False
        apply_model_file(model, state, card, source)
        return model, str(source), bool(trunk)

    def encoder(self, name: str, device: torch.device, trunk: str = "") -> Encoder:
        """The encoder ``name`` on ``device``, built once per ``trunk`` (a model file's path, or "" for pretrained)."""
        key = (name, str(device), trunk)
        if key not in self._encoders:
            try:
                self._encoders[key] = build_encoder(name, device)
            except KeyError as error:
                raise SegmentationError(error.args[0]) from error
            except EncoderUnavailable as error:
                raise SegmentationError(str(error)) from error
        return self._encoders[key]

    def trunk(self, encoder: Encoder, runtime: Runtime) -> Trunk:
        """The trunk of ``encoder`` (one of :meth:`encoder`'s) on ``runtime``, built once
        (:func:`~napari_fewshot.core.runtime.trunk_runner`)."""
        key = (id(encoder), runtime)
        if key not in self._trunks:
            self._trunks[key] = trunk_runner(encoder, runtime)
        return self._trunks[key]

    def decoder(self, runtime: Runtime) -> BoxDecoder:
        """LiteMedSAM's :class:`~napari_fewshot.core.sam_decoder.BoxDecoder` on ``runtime``, built once."""
        if runtime not in self._decoders:
            self._decoders[runtime] = BoxDecoder(runtime)
        return self._decoders[runtime]

    def encoded(self, trunk: Trunk, seconds: float, slices: int) -> None:
        """``trunk`` encoded ``slices`` slices in ``seconds``."""
        if slices:
            totals = self._encoded.setdefault(trunk, [0.0, 0])
            totals[0] += seconds
            totals[1] += slices

    def seconds_per_slice(self, trunk: Trunk) -> float | None:
        """The seconds ``trunk`` took per slice so far in this store, None before it encoded one."""
        seconds, slices = self._encoded.get(trunk, (0.0, 0))
        return seconds / slices if slices else None


def _head(name: str, device: torch.device) -> Head:
    try:
        return build_head(name).to(device)
    except KeyError as error:
        raise SegmentationError(error.args[0]) from error


#: The store of every session made without one: models load once per process.
DEFAULT_STORE = ModelStore()
