"""How right the time left that a segmentation reports is, on real scans.

Each structure of ``../shared/data`` (the development data; ``--case`` to choose)
is segmented from its largest slice with the default options (from the painted
slice outward), once cold (features not cached: the encoder runs) and once
warm (the features of the cold run cached), recording every ``progress(done,
total, seconds_left)`` the engine reports.  For each report after the first
batch (those with more slices done than the painted one, which goes first
alone), the reported seconds left are compared with the seconds the run actually
still took.

    .venv/bin/python benchmarks/time_left.py [--case abdomen-ct 1 2 3 5 --case abdomen-mr 1 2 3 5] [--json OUT]

Prints, per run, the share of reports within 30 % of the truth, the median
error, and the slices planned at the first batch against those done in the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CASES = [["abdomen-ct", "1", "2", "3", "5"], ["abdomen-mr", "1", "2", "3", "5"]]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def measure(session, support: np.ndarray, painted: int) -> dict:
    """One segmentation, every progress report timed; the reports' errors against the time actually left."""
    reports = []
    started = time.perf_counter()
    session.segment(support, progress=lambda done, total, left: reports.append((time.perf_counter(), done, total, left)))
    ended = time.perf_counter()
    after_first = [r for r in reports if r[1] > painted]
    unknown = sum(r[3] is None for r in after_first)
    after_first = [r for r in after_first if r[3] is not None]
    errors = [(left - (ended - t)) / max(ended - t, 1e-9) for t, _, _, left in after_first if ended - t > 0]
    return {
        "seconds": ended - started,
        "reports": len(after_first),
        "unknown": unknown,
        "within_30": sum(abs(e) <= 0.3 for e in errors) / max(len(errors), 1),
        "within_30_or_1s": sum(abs(e) <= 0.3 or abs(e) * (ended - t) <= 1.0
                               for e, (t, *_) in zip(errors, after_first)) / max(len(errors), 1),
        "median_error": statistics.median(errors) if errors else None,
        "first_total": after_first[0][2] if after_first else None,
        "final_total": reports[-1][2],
        "first_left": after_first[0][3] if after_first else None,
        "first_actual_left": ended - after_first[0][0] if after_first else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", action="append", metavar=("FOLDER", "LABEL"),
                        help="a folder of the development data and label values (default: the CT and MR organs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from napari_fewshot.core.engine import FewShotSession
    from napari_fewshot.core.features import FeatureCache
    from napari_fewshot.evaluation.protocols import painted, support_slices
    from napari_fewshot.io import read_volume

    print(f"load before: {load()}")
    rows = []
    for folder, *values in args.case or CASES:
        image = read_volume(DATA / folder / "image.nii.gz")
        labels = read_volume(DATA / folder / "label.nii.gz", kind="labels").data
        for value in map(int, values):
            truth = labels == value
            support = painted(truth, support_slices(truth, "one-largest")).astype(np.uint8)
            session = FewShotSession(image.data, spacing=image.geometry.spacing[::-1], cache=FeatureCache())
            for state in ("cold", "warm"):
                row = {"case": f"{folder} {value}", "state": state, **measure(session, support, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"load after: {load()}")
    print("\n| structure | features | seconds | reports | within 30 % | within 30 % or 1 s | median error | "
          "slices planned at the first batch / in the end | time left told at the first batch / true |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['state']} | {r['seconds']:.1f} | {r['reports']} | {r['within_30']:.0%} | "
              f"{r['within_30_or_1s']:.0%} | {r['median_error']:+.0%} | {r['first_total']} / {r['final_total']} | "
              f"{r['first_left']:.1f} / {r['first_actual_left']:.1f} s |")
    for state in ("cold", "warm"):
        chosen = [r for r in rows if r["state"] == state]
        first = [abs(r["first_left"] / r["first_actual_left"] - 1) <= 0.3 or abs(r["first_left"] - r["first_actual_left"]) <= 1
                 for r in chosen if r["first_left"] is not None]
        print(f"{state}: median share of reports within 30 %: {statistics.median(r['within_30'] for r in chosen):.0%}, "
              f"within 30 % or 1 s: {statistics.median(r['within_30_or_1s'] for r in chosen):.0%}; "
              f"time left told at the first batch within 30 % or 1 s: {sum(first)} of {len(first)} runs")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
