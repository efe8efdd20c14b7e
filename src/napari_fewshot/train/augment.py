"""Random geometric and intensity augmentation of one slice, the same warp for image and mask.

A warp is a sampling grid (``torch.nn.functional.grid_sample`` convention,
normalised coordinates, ``align_corners=False``): for every output pixel, where in
the input to read.  Because the coordinates are normalised, one grid serves an
image at 256x256, its mask, and its features at 32x32 alike (:func:`resize_grid`).
METHOD.md's ranges: rotation ±5°, shift ±5 px, shear ±5°, scale 0.9–1.2, elastic
(alpha 10 px, sigma 5 px), gamma 0.5–1.5; no flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class AugmentRanges:
    """The ranges transforms are drawn from; pixels are those of the grid the warp is made for."""

    rotate_degrees: float = 5.0
    shift_pixels: float = 5.0
    shear_degrees: float = 5.0
    scale: tuple[float, float] = (0.9, 1.2)
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0
    gamma: tuple[float, float] = (0.5, 1.5)


def affine_matrix(
    size: int, *, rotate: float = 0.0, shift: tuple[float, float] = (0.0, 0.0), shear: float = 0.0, scale: float = 1.0
) -> torch.Tensor:
    """The ``[2, 3]`` matrix mapping output to input normalised coordinates for a forward transform.

    The forward transform (content moves by it) scales, shears (degrees, along x),
    rotates (degrees) about the centre, then shifts by
    ``shift`` = (dx, dy) pixels of a ``size`` grid.  Its inverse is what sampling needs.
    """
    theta, phi = math.radians(rotate), math.radians(shear)
    rotation = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    forward = rotation @ np.array([[1.0, math.tan(phi)], [0.0, 1.0]]) * scale
    offset = np.array(shift) * 2.0 / size
    inverse = np.linalg.inv(forward)
    return torch.tensor(np.concatenate([inverse, -(inverse @ offset)[:, None]], axis=1), dtype=torch.float32)


def elastic_displacement(rng: np.random.Generator, size: int, alpha: float, sigma: float) -> torch.Tensor:
    """A smooth random displacement ``[size, size, 2]`` in normalised units: uniform noise, Gaussian-smoothed
    with ``sigma`` pixels, scaled by ``alpha`` pixels (Simard et al.)."""
    fields = [gaussian_filter(rng.uniform(-1.0, 1.0, (size, size)), sigma, mode="constant") * alpha for _ in range(2)]
    return torch.tensor(np.stack(fields, axis=-1) * 2.0 / size, dtype=torch.float32)


def random_warp(rng: np.random.Generator, size: int, ranges: AugmentRanges = AugmentRanges()) -> torch.Tensor:
    """A random affine plus elastic warp for a ``size`` x ``size`` slice: a grid ``[1, size, size, 2]``."""
    matrix = affine_matrix(
        size,
        rotate=rng.uniform(-ranges.rotate_degrees, ranges.rotate_degrees),
        shift=tuple(rng.uniform(-ranges.shift_pixels, ranges.shift_pixels, 2)),
        shear=rng.uniform(-ranges.shear_degrees, ranges.shear_degrees),
        scale=rng.uniform(*ranges.scale),
    )
    grid = F.affine_grid(matrix[None], [1, 1, size, size], align_corners=False)
    if ranges.elastic_alpha > 0:
        grid = grid + elastic_displacement(rng, size, ranges.elastic_alpha, ranges.elastic_sigma)[None]
    return grid


def resize_grid(grid: torch.Tensor, size: int) -> torch.Tensor:
    """The same warp sampled for a ``size`` x ``size`` output: ``[1, size, size, 2]``."""
    if grid.shape[1] == size:
        return grid
    return F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def warp(tensor: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``tensor`` ``[N, C, H, W]`` resampled through ``grid`` (resized to ``H``); zeros come in from outside."""
    grid = resize_grid(grid, tensor.shape[-1]).to(tensor.device).expand(len(tensor), -1, -1, -1)
    return F.grid_sample(tensor, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_gamma(rng: np.random.Generator, image: torch.Tensor, ranges: AugmentRanges = AugmentRanges()) -> torch.Tensor:
    """``image`` in [0, 1] raised to a random gamma."""
    return image.clamp(0.0, 1.0) ** rng.uniform(*ranges.gamma)
