"""Whether a zoomed crop helps small structures: the engine run on a crop around the painting, at the encoder's size.

For every structure of abdomen-ct (``../shared/data``) that lies on at least 5
slices and is small in its slices (its painting's box, grown on each side by its
own size and at least 20 mm, is at most half the slice's field of view), the
default engine segments it three ways from the same painting:

- ``whole``: the whole slices, as the product does;
- ``crop-zN``: a crop of every slice around the painting's box, as above but at
  least 1/N of the field of view (at most N times zoomed), encoded at the
  encoder's input size, so the head's 32x32 grid covers only the crop; the
  prediction is put back on the whole slice;
- ``crop-zN-inside``: the crop's mask, but only on the slices where the whole
  slices' run has the structure (``whole`` decides where and whether, the crop
  draws).

CT only: its intensity window is fixed, so a crop is encoded with exactly the
intensities the whole slice is (an MR crop would take other percentiles).

    .venv/bin/python benchmarks/zoom_crop.py --protocol one-largest --zooms 2 4

Prints each structure's Dice as it goes, then a Markdown table of mean
whole-volume Dice per kind of structure.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
from kind_table import print_kind_table

from napari_fewshot.core.engine import segment
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.evaluation.cases import read_case, tasks_for
from napari_fewshot.evaluation.kinds import kind
from napari_fewshot.evaluation.metrics import dice

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abdomen-ct"
#: Around the painting's box, at least this many mm on each side (and at least the box's own size).
MARGIN_MM = 20.0


def crop_box(painting: np.ndarray, spacing: tuple[float, float, float], max_zoom: float) -> tuple[slice, slice] | None:
    """The rows and columns of the crop around ``painting`` ``[Z, Y, X]`` bool; None when the structure is not small."""
    _, rows, columns = np.nonzero(painting)
    height, width = painting.shape[1:]
    fov = max(height * spacing[1], width * spacing[2])
    side = max((np.ptp(rows) + 1) * spacing[1], (np.ptp(columns) + 1) * spacing[2])
    wanted = side + 2 * max(MARGIN_MM, side)
    if wanted > fov / 2:
        return None
    crop_mm = max(wanted, fov / max_zoom)
    h, w = min(height, round(crop_mm / spacing[1])), min(width, round(crop_mm / spacing[2]))
    top = int(np.clip(round((rows.min() + rows.max()) / 2 - h / 2), 0, height - h))
    left = int(np.clip(round((columns.min() + columns.max()) / 2 - w / 2), 0, width - w))
    return slice(top, top + h), slice(left, left + w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="one-largest", choices=["one-largest", "one-middle", "three"])
    parser.add_argument("--zooms", nargs="+", type=float, default=[2.0, 4.0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    case = read_case(DATA, ["all"])
    cache = FeatureCache()
    scores: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for task in tasks_for(case, args.protocol, [case]):
        painting = task.painting()
        if crop_box(painting > 0, case.spacing, args.zooms[0]) is None:
            continue
        run = dict(spacing=case.spacing, modality="CT", head="alpnet", cache=cache, device=args.device)
        whole = segment(case.image, painting, **run).labels == 1
        structure = kind(case.structure(task.value))
        masks = {"whole": whole}
        for zoom in args.zooms:
            rows, columns = crop_box(painting > 0, case.spacing, zoom)
            cropped = np.zeros_like(whole)
            cropped[:, rows, columns] = segment(case.image[:, rows, columns], painting[:, rows, columns], **run).labels == 1
            inside = whole.any(axis=(1, 2)) & cropped.any(axis=(1, 2))
            masks[f"crop-z{zoom:g}"] = cropped
            masks[f"crop-z{zoom:g}-inside"] = np.where(inside[:, None, None], cropped, whole)
        for name, mask in masks.items():
            scores[name].append((structure, dice(mask, task.truth)))
        print(case.structure(task.value), " ".join(f"{n} {dice(m, task.truth):.3f}" for n, m in masks.items()),
              flush=True)
    print_kind_table(args.protocol, "method", scores)


if __name__ == "__main__":
    main()
