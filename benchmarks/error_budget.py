"""Where the default loses its Dice, per kind of structure: slices past the structure, slices missed, boundaries.

For every structure of the cases, one session per case segments it from its
painted slices (default options, as ``evaluate``'s ``alpnet``), and
:func:`budget.dice_budget` (``benchmarks/budget.py``) scores the prediction as it
is and with each error mended from the truth: the slices predicted past the
structure emptied, the slices missed given the truth, both (the slice range
right), and the truth drawn on every slice both hold (the boundaries right).
The gaps say what a better rule for where a structure ends, or a better
boundary, could gain at most.

    .venv/bin/python benchmarks/error_budget.py --case ../shared/data/abdomen-ct all \\
        --case ../shared/data/abdomen-mr all --case ../shared/data/brain-mr-mni all \\
        --protocol one-largest three [--cache DIR]

Prints a line per structure, then per protocol a table of the mean whole-volume
Dice per kind, one with the mean Dice on the slices where the structure is found
(painted slices left out), the slices missed and predicted past it as a share of
the structure's slices, and the Dice of the slices found by their distance to the
nearest painting, beside the nearest painting copied there.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
from kind_table import print_kind_table

from napari_fewshot.core.engine import FewShotSession
from napari_fewshot.core.features import FeatureCache
from budget import DiceBudget, dice_budget, dice_by_distance
from napari_fewshot.evaluation.cases import read_case, tasks_for
from napari_fewshot.evaluation.kinds import kind
from napari_fewshot.evaluation.propagation import copy_step, propagate
from napari_fewshot.evaluation.protocols import PROTOCOLS

#: Slices this far or further from the nearest painting are counted together.
FAR = 10

#: The table's rows: a :class:`DiceBudget` field and what it says.
ROWS = {
    "as_predicted": "as predicted",
    "past_emptied": "slices past the structure emptied",
    "missed_filled": "slices missed given the truth",
    "extent_right": "both: the slice range right",
    "boundaries_right": "the truth on the slices found: the boundaries right",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"))
    parser.add_argument("--protocol", nargs="+", default=["one-largest"], choices=[p for p in PROTOCOLS if p != "cross"])
    parser.add_argument("--cache", metavar="DIR", help="a folder of encoded volumes kept between runs")
    args = parser.parse_args()
    cache = FeatureCache(folder=args.cache)
    budgets: dict[str, list[tuple[str, DiceBudget]]] = collections.defaultdict(list)
    distances: dict[str, dict[int, list[tuple[float, ...]]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for folder, *values in args.case:
        case = read_case(folder, values)
        session = FewShotSession(case.image, spacing=case.spacing, cache=cache)
        for protocol in args.protocol:
            for task in tasks_for(case, protocol, [case]):
                labels = session.segment(task.painting()).labels
                budget = dice_budget(labels == 1, task.truth, task.support_slices)
                budgets[protocol].append((kind(case.structure(task.value)), budget))
                copy = propagate({z: task.truth[z] for z in task.support_slices}, len(task.truth), copy_step)
                for distance, scores in dice_by_distance([labels == 1, copy], task.truth, task.support_slices).items():
                    distances[protocol][min(distance, FAR)] += scores
                print(f"{protocol} {case.name} {case.structure(task.value)}: "
                      + ", ".join(f"{name} {getattr(budget, name):.3f}" for name in (*ROWS, "on_found"))
                      + f"; {budget.missed} of {budget.slices} slices missed, {budget.past} past", flush=True)
    for protocol, rows in budgets.items():
        print_kind_table(f"{protocol}: where the Dice is lost", "the prediction",
                         {label: [(k, getattr(b, name)) for k, b in rows] for name, label in ROWS.items()})
        print_kind_table(f"{protocol}: where the structure is found", "the prediction",
                         {"on the slices found": [(k, b.on_found) for k, b in rows]},
                         metric="Dice on those slices, painted ones left out")
        print_kind_table(f"{protocol}: slices the range gets wrong", "slices", {
            "missed": [(k, b.missed / b.slices) for k, b in rows],
            "predicted past the structure": [(k, b.past / b.slices) for k, b in rows],
        }, metric="share of the structure's slices")
        print(f"\n{protocol}: mean Dice of the slices found, by their distance to the nearest painting\n\n"
              "| slices away | slices | as predicted | the nearest painting copied |\n|---|---|---|---|")
        for distance, scores in sorted(distances[protocol].items()):
            predicted, copied = np.mean(scores, axis=0)
            print(f"| {distance}{'+' if distance == FAR else ''} | {len(scores)} | {predicted:.3f} | {copied:.3f} |")
        print(f"\n{protocol}: {len(rows)} structures, mean whole-volume Dice "
              f"{np.mean([b.as_predicted for _, b in rows]):.3f}")


if __name__ == "__main__":
    main()
