"""One-slice propagation on real scans: whole-volume Dice, first vs re-segmentation time, peak memory.

For each structure the support is its slice of largest area (along the file's
first array axis); every slice of the volume is predicted and scored.  Each
head runs with each set of weights (untrained, the shipped model, a trained
file) and each choice of which 3D components to keep; all runs of one case
share one feature cache (the encoder's trunk features), so only the first call
encodes.

    .venv/bin/python benchmarks/engine_one_slice.py --case abdomen-ct --labels 5 1 2 3
    .venv/bin/python benchmarks/engine_one_slice.py --case brain-mr-mni --labels 1 2 --weights none default

Prints a Markdown table and writes ``--json`` when given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
from pathlib import Path

import numpy as np
import torch

from napari_fewshot.core.engine import segment
from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.heads import HEADS
from napari_fewshot.core.postprocess import KEEP
from napari_fewshot.io import read_volume

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = prediction.sum() + truth.sum()
    return float(2 * np.logical_and(prediction, truth).sum() / total) if total else 1.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="folder under ../shared/data with image.nii.gz and label.nii.gz")
    parser.add_argument("--labels", type=int, nargs="+", required=True)
    parser.add_argument("--encoder", default="litemedsam")
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    parser.add_argument("--weights", nargs="+", default=["none"], help="none, default, or model files")
    parser.add_argument("--keep", nargs="+", choices=KEEP, default=list(KEEP))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    image = read_volume(DATA / args.case / "image.nii.gz", kind="image")
    truth = read_volume(DATA / args.case / "label.nii.gz", kind="labels").data
    spacing = image.geometry.spacing[::-1]  # (z, y, x) for the array
    cache = FeatureCache()
    rows, first_seconds, again_seconds = [], None, []
    for value in args.labels:
        structure = truth == value
        support_slice = int(structure.reshape(len(structure), -1).sum(axis=1).argmax())
        support = np.zeros(truth.shape, dtype=np.uint8)
        support[support_slice] = structure[support_slice]
        for head, weights, keep in itertools.product(args.heads, args.weights, args.keep):
            result = segment(
                image.data, support, spacing=spacing, encoder=args.encoder, head=head, weights=weights,
                device=args.device, keep=keep, cache=cache,
            )
            if first_seconds is None:
                first_seconds = result.seconds["total"]
                encoded_rss = peak_rss_mib()
            else:
                again_seconds.append(result.seconds["total"])
            rows.append({
                "label": value, "support_slice": support_slice, "head": head, "weights": weights, "keep": keep,
                "dice": dice(result.labels == 1, structure), "seconds": result.seconds["total"],
            })
            print(rows[-1], flush=True)
    again = statistics.median(again_seconds)
    summary = {
        "case": args.case, "encoder": args.encoder, "device": result.device, "shape": list(image.data.shape),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "first_segmentation_s": first_seconds, "resegmentation_median_s": again,
        "speedup": first_seconds / again, "feature_mib": result.feature_bytes / 2**20,
        "peak_rss_after_first_mib": encoded_rss, "peak_rss_mib": peak_rss_mib(), "rows": rows,
    }
    print(f"\n{args.case} ({'x'.join(map(str, image.data.shape))}), encoder {args.encoder}, {summary['machine']}")
    print("| head | weights | components kept | " + " | ".join(f"label {v}" for v in args.labels) + " | mean |")
    print("|---|---|---|" + "---|" * (len(args.labels) + 1))
    for head, weights, keep in itertools.product(args.heads, args.weights, args.keep):
        scores = [r["dice"] for r in rows if (r["head"], r["weights"], r["keep"]) == (head, weights, keep)]
        print(f"| {head} | {weights} | {keep} | " + " | ".join(f"{s:.3f}" for s in scores) + f" | {np.mean(scores):.3f} |")
    print(f"\nfirst segmentation {first_seconds:.1f} s; re-segmentation median {again:.2f} s "
          f"({first_seconds / again:.0f}x); features {summary['feature_mib']:.0f} MiB; "
          f"peak RSS {encoded_rss:.0f} MiB after the first, {summary['peak_rss_mib']:.0f} MiB at the end")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
