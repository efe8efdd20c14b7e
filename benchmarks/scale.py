"""How a first segmentation's time and peak memory grow with the number of slices and their size.

abdomen-ct (``../shared/data``) is resampled (linear; its label map nearest) to
each size ``SLICESxPIXELS`` (slices along the first axis, square slices), the
liver painted on its slice of largest area, and the volume segmented from
scratch in a fresh process, so each size gets its own peak resident memory;
then segmented again from the cached features, and once more from a new cache after
``--ahead`` seconds of encoding ahead (as the widget does while the user paints).

    .venv/bin/python benchmarks/scale.py --sizes 100x256 100x512 300x512 [--ahead 60]

Prints a Markdown table (and writes ``--json`` when given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from latency import time_after_ahead

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abdomen-ct"
LIVER = 5


def resampled(path: Path, slices: int, pixels: int, interpolator: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume at ``path`` resampled to ``[slices, pixels, pixels]``; returns it and its spacing (z, y, x) in mm."""
    image = sitk.ReadImage(str(path))
    old_size, old_spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    size = np.array([pixels, pixels, slices])
    spacing = old_spacing * old_size / size
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(image)
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputSpacing(spacing.tolist())
    resampler.SetInterpolator(interpolator)
    return sitk.GetArrayFromImage(resampler.Execute(image)), tuple(spacing[::-1].tolist())


def measure(slices: int, pixels: int, device: str, ahead: float) -> dict:
    """One size, in this process: first segmentation, re-segmentation, after encoding ahead, peak memory."""
    from napari_fewshot.core.engine import segment
    from napari_fewshot.core.features import FeatureCache
    from napari_fewshot.evaluation.memory import peak_mib, reset_peak
    from napari_fewshot.evaluation.protocols import painted, support_slices

    image, spacing = resampled(DATA / "image.nii.gz", slices, pixels, sitk.sitkLinear)
    liver = resampled(DATA / "label.nii.gz", slices, pixels, sitk.sitkNearestNeighbor)[0] == LIVER
    support = painted(liver, support_slices(liver, "one-largest"))
    cache = FeatureCache()
    reset_peak()
    first = segment(image, support, spacing=spacing, device=device, cache=cache)
    first_peak = peak_mib()
    again = [segment(image, support, spacing=spacing, device=device, cache=cache).seconds["total"] for _ in range(3)]
    after_ahead = time_after_ahead(first.runtime, image, support, spacing, liver, ahead)
    result_mib = sum(a.nbytes for a in (*first.probabilities.values(), *first.attention.values(), first.labels)) / 2**20
    return {
        "slices": slices, "pixels": pixels, "image_mib": image.nbytes / 2**20, "device": first.device,
        "first_s": first.seconds["total"], "encode_s": first.seconds["encode"],
        "encoded": first.encoded_slices, "runtime": str(first.runtime), "again_s": float(np.median(again)),
        "feature_mib": first.feature_bytes / 2**20, "result_mib": result_mib, "peak_mib": first_peak,
        "ahead_s": ahead, "after_ahead_s": after_ahead["seconds"], "after_ahead_encoded": after_ahead["encoded slices"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["100x256", "100x512", "300x512"], help="SLICESxPIXELS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ahead", type=float, default=60.0, help="seconds of encoding ahead before the last run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one size in this process
    args = parser.parse_args()
    if args.one:
        slices, pixels = map(int, args.one.split("x"))
        print(json.dumps(measure(slices, pixels, args.device, args.ahead)))
        return
    rows = []
    for size in args.sizes:
        run = subprocess.run([sys.executable, __file__, "--one", size, "--device", args.device, "--ahead", str(args.ahead)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
    print("| slices | slice pixels | image MiB | first segmentation s (encoding) | slices encoded | re-segmentation s | "
          "after encoding ahead s (slices encoded then) | features MiB | result arrays MiB | peak resident MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['slices']} | {r['pixels']}² | {r['image_mib']:.0f} | {r['first_s']:.1f} ({r['encode_s']:.1f}) | "
              f"{r['encoded']} | "
              f"{r['again_s']:.2f} | {r['after_ahead_s']:.1f} after {r['ahead_s']:.0f} s ({r['after_ahead_encoded']}) | "
              f"{r['feature_mib']:.0f} | {r['result_mib']:.0f} | {r['peak_mib']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
