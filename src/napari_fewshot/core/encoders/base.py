"""The encoder interface: a trunk plus the 1x1 reduction to 256 channels."""

from __future__ import annotations

import torch
from torch import nn

#: Channels of the features every encoder gives the heads.
FEATURE_CHANNELS = 256


class EncoderUnavailable(RuntimeError):
    """An encoder's weights cannot be loaded here (offline, package missing)."""


class Encoder(nn.Module):
    """``forward(x [N, 3, S, S] in [0, 1]) -> features [N, 256, h, w]``.

    Subclasses set ``name``, ``input_size``, ``trunk_channels`` and ``trunk_stride``
    (input pixels per trunk output cell along each side), and implement :meth:`trunk`
    (input already in [0, 1]).  ``reduce`` is the 1x1 convolution without bias to 256
    channels; ``identity_reduction`` starts it as the identity (for a trunk that
    already gives 256 channels) instead of a seeded random init.
    """

    name: str = ""
    input_size: int = 256
    trunk_channels: int = FEATURE_CHANNELS
    trunk_stride: int = 4

    def __init__(self, identity_reduction: bool = False) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(self.trunk_channels, FEATURE_CHANNELS, kernel_size=1, bias=False)
        with torch.no_grad():
            if identity_reduction:
                self.reduce.weight.copy_(torch.eye(FEATURE_CHANNELS)[:, :, None, None])
            else:
                generator = torch.Generator().manual_seed(0)
                bound = (1.0 / self.trunk_channels) ** 0.5
                weight = torch.rand(self.reduce.weight.shape, generator=generator) * 2 * bound - bound
                self.reduce.weight.copy_(weight)

    @property
    def trunk_shape(self) -> tuple[int, int, int]:
        """What :meth:`trunk` gives per slice: ``(trunk_channels, h, w)``."""
        side = self.input_size // self.trunk_stride
        return self.trunk_channels, side, side

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects slices [N, 3, H, W], got {tuple(x.shape)}")
        return self.reduce(self.trunk(x))
