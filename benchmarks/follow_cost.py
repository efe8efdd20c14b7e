"""What carrying the boundaries by registration (``follow_anatomy``) costs in seconds, by slice size and structure.

abdomen-ct (``../shared/data``) is resampled to each size ``SLICESxPIXELS`` (as in
``scale.py``), a structure painted on its slice of largest area, the volume encoded
once, and then segmented from the cached features with ``follow_anatomy`` off and
on, alternately, ``--repeats`` times each: the difference is registration's time.
Dice against the resampled label map is printed beside it.

    .venv/bin/python benchmarks/follow_cost.py --sizes 112x101 100x512 300x512 --structures 5 2 52

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import SimpleITK as sitk
from scale import DATA, resampled


def measure(slices: int, pixels: int, value: int, device: str, repeats: int) -> dict:
    from napari_fewshot.core.engine import encode_volume, segment
    from napari_fewshot.core.features import FeatureCache
    from napari_fewshot.evaluation.metrics import dice
    from napari_fewshot.evaluation.protocols import painted, support_slices

    image, spacing = resampled(DATA / "image.nii.gz", slices, pixels, sitk.sitkLinear)
    truth = resampled(DATA / "label.nii.gz", slices, pixels, sitk.sitkNearestNeighbor)[0] == value
    support = painted(truth, support_slices(truth, "one-largest"))
    cache = FeatureCache()
    encode_volume(image, spacing=spacing, device=device, cache=cache)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    scores = {}
    for _ in range(repeats):
        for follow in (False, True):
            result = segment(image, support, spacing=spacing, device=device, cache=cache, follow_anatomy=follow)
            seconds[follow].append(result.seconds["total"])
            scores[follow] = dice(result.labels == 1, truth)
            slices_on = int(np.count_nonzero((result.labels == 1).any(axis=(1, 2))))
    names = json.loads((DATA / "labels.json").read_text())
    return {"size": f"{slices}x{pixels}", "structure": names.get(str(value), str(value)), "slices_on": slices_on,
            "off_s": statistics.median(seconds[False]), "on_s": statistics.median(seconds[True]),
            "dice_off": scores[False], "dice_on": scores[True]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["112x101", "100x512", "300x512"], help="SLICESxPIXELS")
    parser.add_argument("--structures", nargs="+", type=int, default=[5, 2, 52], help="label values of abdomen-ct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| size | structure | slices it is on | seconds, follow off | seconds, follow on | extra s per slice | "
          "Dice off | Dice on |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        slices, pixels = map(int, size.split("x"))
        for value in args.structures:
            r = measure(slices, pixels, value, args.device, args.repeats)
            extra = (r["on_s"] - r["off_s"]) / max(r["slices_on"], 1)
            print(f"| {r['size']}² | {r['structure']} | {r['slices_on']} | {r['off_s']:.2f} | {r['on_s']:.2f} | "
                  f"{extra:.3f} | {r['dice_off']:.3f} | {r['dice_on']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
