"""Pseudo-labels without annotation: superpixels (2D) or supervoxels (3D) inside the body.

Every function works on slices already on the encoder's grid (``[N, S, S]``,
intensities in [0, 1] as :func:`~napari_fewshot.core.preprocess.normalise_intensities`
gives them), so a pseudo-label and the encoder input line up pixel for pixel.
Labels are int32: 0 outside the body, 1..K for the segments.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import felzenszwalb, quickshift, slic

from ..core.postprocess import largest_component
from ..core.preprocess import Preprocessing

#: Superpixel algorithms (scikit-image); Felzenszwalb-Huttenlocher is the reference.
SUPERPIXELS = ("felzenszwalb", "slic", "quickshift")
#: Felzenszwalb's minimum segment size on the reference 256x256 grid (METHOD.md), and its smoothing.
FELZENSZWALB_MIN_SIZE, FELZENSZWALB_SIGMA = 400, 1.0
#: Above this many HU a CT voxel is body (air is about -1000 HU, fat about -100 HU).
CT_BODY_HU = -500.0
#: Target size of a 3D supervoxel in voxels of the 256x256 encoder grid (about 3000 voxels of a typical scan, METHOD.md: 1000 to 5000).
SUPERVOXEL_SIZE = 12000
#: SLIC's balance of intensity (in [0, 1]) against distance (in mm) for supervoxels.
SUPERVOXEL_COMPACTNESS = 0.03
#: What a cached pseudo-label depends on besides the image and the method.
PARAMETERS = (FELZENSZWALB_MIN_SIZE, FELZENSZWALB_SIGMA, CT_BODY_HU, SUPERVOXEL_SIZE, SUPERVOXEL_COMPACTNESS)


def body_mask(volume: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Where the body is in ``volume`` ``[Z, Y, X]`` (file units): bool, same shape.

    CT: above -500 HU; MR: above half the Otsu threshold of the intensities.  Then
    the largest 3D connected component, with each slice's holes filled (lungs,
    bowel gas and the skull's inside belong to the body).
    """
    values = np.asarray(volume, dtype=np.float32)
    threshold = CT_BODY_HU if preprocessing.modality == "CT" else 0.5 * float(threshold_otsu(values[:: max(1, values.shape[0] // 32)]))
    body = largest_component(values > threshold)
    return np.stack([ndimage.binary_fill_holes(plane) for plane in body])


def superpixels(image: np.ndarray, body: np.ndarray, method: str = "felzenszwalb") -> np.ndarray:
    """Superpixels of one slice ``image`` ``[S, S]`` in [0, 1] inside ``body`` ``[S, S]`` bool: int32 ``[S, S]``.

    Sizes follow the reference 256x256 grid, scaled by area to other grids.
    """
    if method not in SUPERPIXELS:
        raise ValueError(f"unknown superpixel method '{method}'; choose one of {', '.join(SUPERPIXELS)}")
    area = image.shape[0] * image.shape[1] / 256**2
    if method == "felzenszwalb":
        segments = felzenszwalb(image * 255.0, scale=1.0, sigma=FELZENSZWALB_SIGMA,
                                min_size=max(4, round(FELZENSZWALB_MIN_SIZE * area)), channel_axis=None)
    elif method == "slic":
        segments = slic(image, n_segments=max(2, round(body.sum() / (FELZENSZWALB_MIN_SIZE * area) )),
                        compactness=SUPERVOXEL_COMPACTNESS, mask=body, channel_axis=None)
    else:
        segments = quickshift(np.repeat(image[..., None], 3, axis=-1), ratio=0.5, kernel_size=3, max_dist=6, convert2lab=False)
    return _inside(segments, body)


def supervoxels(images: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """3D supervoxels of a stack ``images`` ``[N, S, S]`` in [0, 1] inside ``body``: int32 ``[N, S, S]``.

    SLIC in 3D with the voxel size ``spacing_mm`` (between slices, rows, columns),
    so supervoxels are compact in millimetres whatever the slice spacing; about
    ``SUPERVOXEL_SIZE`` voxels each.  Computed on every second row and column
    (a quarter of the work) and upsampled.
    """
    coarse_spacing = (spacing_mm[0], spacing_mm[1] * 2, spacing_mm[2] * 2)
    coarse_body = body[:, ::2, ::2]
    count = max(2, round(coarse_body.sum() * 4 / SUPERVOXEL_SIZE))
    segments = slic(images[:, ::2, ::2], n_segments=count, compactness=SUPERVOXEL_COMPACTNESS,
                    spacing=coarse_spacing, mask=coarse_body, channel_axis=None)
    segments = np.repeat(np.repeat(segments, 2, axis=1), 2, axis=2)[:, : images.shape[1], : images.shape[2]]
    return _inside(segments, body)


def _inside(segments: np.ndarray, body: np.ndarray) -> np.ndarray:
    """``segments`` cut to ``body`` and renumbered 1..K (0 outside): int32."""
    kept = np.where(body, segments.astype(np.int64) + 1, 0)
    _, inverse = np.unique(kept, return_inverse=True)
    labels = inverse.reshape(kept.shape).astype(np.int32)
    return labels if kept.min() == 0 else labels + 1
