"""How many demons iterations carrying a boundary needs: one step's accuracy and time, by iterations.

For every structure of the cases (``--case DIR all``, as ``evaluate`` takes them),
its true mask on each slice is carried onto the next slice by
:class:`~napari_fewshot.core.registration.SliceRegistration` with the engine's
margin and binning, once per number of iterations, and compared (Dice) with the
true mask there: one step of ``follow_anatomy``'s walk, free of the engine's
mask and of drift.  The milliseconds per step are the median over all steps.

    .venv/bin/python benchmarks/carry_steps.py --case ../shared/data/abdomen-ct all \\
        --case ../shared/data/abdomen-mr all --case ../shared/data/brain-mr-mni all --iterations 50 30 20 10

Prints a Markdown table: mean one-step Dice per kind of structure and milliseconds per step.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
from kind_table import print_kind_table

from napari_fewshot.core.follow import FOLLOW_MARGIN_MM, FOLLOW_MAX_SIDE
from napari_fewshot.core.preprocess import Preprocessing
from napari_fewshot.core.registration import SliceRegistration
from napari_fewshot.evaluation.cases import read_case
from napari_fewshot.evaluation.kinds import kind
from napari_fewshot.evaluation.metrics import dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"))
    parser.add_argument("--iterations", nargs="+", type=int, default=[50, 30, 20, 10])
    args = parser.parse_args()
    scores: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    milliseconds: dict[str, list[float]] = collections.defaultdict(list)
    for folder, *values in args.case:
        case = read_case(folder, values)
        preprocessing = Preprocessing.for_volume(case.image)
        for value in case.values:
            truth = case.truth == value
            on = np.flatnonzero(truth.any(axis=(1, 2)))
            steps = [z for z in on if z + 1 in set(on)]
            for iterations in args.iterations:
                name = f"{iterations} iterations"
                carry = SliceRegistration(case.image, case.spacing[1:], preprocessing, iterations=iterations,
                                          margin_mm=FOLLOW_MARGIN_MM, max_side=FOLLOW_MAX_SIDE)
                step_dice = []
                for z in steps:
                    started = time.perf_counter()
                    carried = carry(truth[z], z, z + 1)
                    milliseconds[name].append(1000 * (time.perf_counter() - started))
                    step_dice.append(dice(carried, truth[z + 1]))
                scores[name].append((kind(case.structure(value)), float(np.mean(step_dice))))
            print(case.name, case.structure(value), " ".join(f"{n} {d:.4f}" for n, rows in scores.items()
                                                             for _, d in rows[-1:]), flush=True)
    print_kind_table("one step carried", "demons", scores, "Dice of the carried mask")
    print("\n| demons | median ms per step |\n|---|---|")
    for name, values in milliseconds.items():
        print(f"| {name} | {np.median(values):.1f} |")


if __name__ == "__main__":
    main()
