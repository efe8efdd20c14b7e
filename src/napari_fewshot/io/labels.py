"""Pixel types for label maps."""

from __future__ import annotations

import numpy as np

_LABEL_DTYPES = (np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.int64)


def label_dtype(data: np.ndarray) -> np.dtype:
    """The smallest integer type (unsigned first) that holds every value of ``data``.

    ``data`` must hold whole numbers; an empty array gives ``uint8``.
    """
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for dtype in _LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"label values {low}..{high} do not fit in 64-bit integers")
