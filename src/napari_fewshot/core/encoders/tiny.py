"""A small seeded convolutional encoder for tests: fast, deterministic, no download."""

from __future__ import annotations

import torch
from torch import nn

from .base import Encoder


class TinyEncoder(Encoder):
    """Three 3x3 convolutions, the first strided (64x64 input -> 32x32), weights seeded.

    Random but fixed filters respond to local intensity and texture, enough for
    prototype matching on synthetic volumes with distinct structures.
    """

    name = "tiny"
    input_size = 64
    trunk_channels = 64
    trunk_stride = 2

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            channels = [3, 32, 64, self.trunk_channels]
            layers: list[nn.Module] = []
            for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
                layers += [nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1), nn.GELU()]
            self.layers = nn.Sequential(*layers)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2.0 - 1.0)
