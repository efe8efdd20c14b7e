"""The refine step's network: a 2D U-Net with a segmentation head and a projection head (PCCS.md, "Networks").

Encoder levels 0-4 have 32, 32, 64, 128 and 256 channels (level ``l`` at
``1 / 2**l`` of the input size); each block is conv3x3-BN-LeakyReLU-dropout-
conv3x3-BN-LeakyReLU, with dropout growing with depth.  The decoder mirrors it
without dropout.  The projection head fuses encoder levels 1-3, resized to a
quarter of the input size, into an L2-normalised embedding per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Channels of encoder levels 0-4.
CHANNELS = (32, 32, 64, 128, 256)
#: Dropout of encoder levels 0-4.
DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
#: Channels of the projection head's embedding.
EMBEDDING = 256


def _block(inputs: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.LeakyReLU(0.01),
        nn.Dropout2d(dropout),
        nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.LeakyReLU(0.01),
    )


class UNet(nn.Module):
    """``forward(x [N, 1, S, S]) -> (logits [N, classes, S, S], embedding [N, EMBEDDING, S/4, S/4])``.

    ``S`` must be a multiple of 16.  ``classes`` counts the background.
    """

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.down = nn.ModuleList(
            _block(1 if level == 0 else CHANNELS[level - 1], channels, dropout)
            for level, (channels, dropout) in enumerate(zip(CHANNELS, DROPOUT))
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(CHANNELS[level], CHANNELS[level - 1], 2, stride=2) for level in range(4, 0, -1))
        self.merge = nn.ModuleList(_block(2 * CHANNELS[level - 1], CHANNELS[level - 1], 0.0) for level in range(4, 0, -1))
        self.segmentation = nn.Conv2d(CHANNELS[0], classes, 3, padding=1)
        fused = sum(CHANNELS[1:4])
        self.projection = nn.Sequential(
            nn.Conv2d(fused, fused, 1), nn.BatchNorm2d(fused), nn.ReLU(), nn.Conv2d(fused, EMBEDDING, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            levels.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(levels[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        quarter = levels[2].shape[-2:]
        fused = torch.cat([F.interpolate(levels[i], size=quarter, mode="bilinear", align_corners=False) for i in (1, 2, 3)], 1)
        return self.segmentation(x), F.normalize(self.projection(fused), dim=1)
