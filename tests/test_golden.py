"""Today's default labels, pinned: a change to how the engine is built must not change what it segments.

The cases run the default pipeline on the small synthetic volume of ``conftest.ellipsoids``
(every other slice, 4 mm apart) with LiteMedSAM's encoder on OpenVINO at float32 (not
bfloat16, which only some CPUs have; torch at float32 gives the same labels), so every
rule of the default takes part: the decoder's boundaries, the outward walk, the ends, the
intensity stop, the anatomy followed by registration, and, with several painted slices,
holding between and past the paintings.  ``tests/data/golden.npz`` holds the labels the
engine gave before it was split into stages; to write it anew after a deliberate change
of the default, run ``python tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ellipsoids
from napari_fewshot import segment
from napari_fewshot.core.features import FeatureCache

GOLDEN = Path(__file__).resolve().parent / "data" / "golden.npz"
RUNTIME = dict(device="cpu", backend="openvino", precision="f32")


def _painting(truth: np.ndarray, slices: dict[int, tuple[int, ...]]) -> np.ndarray:
    """Each structure ``value`` of ``truth`` painted on its ``slices``."""
    painting = np.zeros_like(truth)
    for value, where in slices.items():
        for z in where:
            painting[z][truth[z] == value] = value
    return painting


#: name: which slices each structure is painted on
CASES = {
    "two-structures-one-slice": {1: (6,), 2: (6,)},
    "two-structures-own-slices": {1: (5,), 2: (7,)},
    "three-slices": {1: (3, 6, 9)},
}


def _labels(name: str, cache: FeatureCache) -> np.ndarray:
    image, truth = (volume[::2] for volume in ellipsoids())
    return segment(image, _painting(truth, CASES[name]), spacing=(4.0, 1.0, 1.0), cache=cache, **RUNTIME).labels


@pytest.fixture(scope="module")
def cache() -> FeatureCache:
    return FeatureCache()


@pytest.mark.parametrize("name", CASES)
def test_the_default_gives_the_pinned_labels(name, cache):
    expected = np.load(GOLDEN)[name]
    labels = _labels(name, cache)
    differ = int(np.count_nonzero(labels != expected))
    assert differ == 0, f"{differ} voxels differ from the pinned labels of case '{name}'"
    assert len(np.unique(expected)) > 1  # the pinned case segments something


if __name__ == "__main__":
    shared = FeatureCache()
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **{name: _labels(name, shared) for name in CASES})
    sys.exit(0)
