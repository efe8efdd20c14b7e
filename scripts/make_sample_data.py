"""Build the packaged sample data from the TotalSegmentator example CT.

    .venv/bin/python scripts/make_sample_data.py [--data ../shared/data/abdomen-ct]

Writes into src/napari_fewshot/sample_data/:
- abdomen_ct.nii.gz: the example CT (HU, 3 mm) cropped to the slices that hold
  the liver, spleen and kidneys, with two slices of margin;
- abdomen_ct_liver_support.nii.gz: the liver (value 1) on the one slice where
  its area is largest, all other slices empty: the support a user would paint.
Geometry (origin of the crop, spacing, direction) is kept exactly.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_fewshot.io import read_volume, write_volume

ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}
MARGIN = 2
OUT = Path(__file__).resolve().parent.parent / "src" / "napari_fewshot" / "sample_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/abdomen-ct"))
    args = parser.parse_args()
    names = json.loads((args.data / "labels.json").read_text())
    assert all(names[str(v)] == k for k, v in ORGANS.items()), "labels.json does not name the expected organs"

    image = read_volume(args.data / "image.nii.gz")
    labels = read_volume(args.data / "label.nii.gz", kind="labels").data
    slices = np.flatnonzero(np.isin(labels, list(ORGANS.values())).any(axis=(1, 2)))
    first, last = max(slices[0] - MARGIN, 0), min(slices[-1] + MARGIN, labels.shape[0] - 1)
    crop = image.data[first : last + 1]
    crop_geometry = replace(
        image.geometry,
        origin=tuple(image.geometry.index_to_physical(np.array([first, 0, 0]))),
        size=crop.shape[::-1],
        source="",
    )
    liver = labels[first : last + 1] == ORGANS["liver"]
    support_slice = int(np.argmax(liver.sum(axis=(1, 2))))
    support = np.zeros(liver.shape, dtype=np.uint8)
    support[support_slice] = liver[support_slice]

    OUT.mkdir(exist_ok=True)
    write_volume(OUT / "abdomen_ct.nii.gz", crop, crop_geometry)
    write_volume(OUT / "abdomen_ct_liver_support.nii.gz", support, crop_geometry.with_pixel_type("uint8"))
    print(f"slices {first}..{last} of {labels.shape[0]}; liver support on slice {support_slice} "
          f"({int(support.sum())} voxels); written to {OUT}")


if __name__ == "__main__":
    main()
