"""napari-fewshot: few-shot segmentation of CT and MRI volumes in napari.

>>> from napari_fewshot import segment
>>> result = segment(ct, painted_labels, spacing=(3.0, 0.8, 0.8))   # doctest: +SKIP
>>> result.labels, result.probabilities[1], result.attention[1]     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FewShotSession", "SegmentOptions", "__version__", "segment"]


def __getattr__(name: str) -> Any:
    # The engine imports torch; napari reads the manifest without paying for that.
    if name == "segment":
        from .core.engine import segment

        return segment
    if name == "SegmentOptions":
        from .core.options import SegmentOptions

        return SegmentOptions
    if name == "FewShotSession":
        from .core.engine import FewShotSession

        return FewShotSession
    raise AttributeError(f"module 'napari_fewshot' has no attribute '{name}'")
