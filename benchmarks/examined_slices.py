"""How many slices the engine predicts for each structure: those a first segmentation encodes.

The engine walks from the painted slices outward until each structure ends
(``walk_outward``), so where it decides a structure ends also sets how many slices
it encodes, predicts and has registration carry the boundaries onto.  For every
structure of the cases, one session per case segments it from its painted slices
(default options) and the slices examined (``Segmentation.examined``) are counted.
Run it at two commits to compare their walks.

    .venv/bin/python benchmarks/examined_slices.py --case ../shared/data/abdomen-ct all \\
        --case ../shared/data/abdomen-mr all --case ../shared/data/brain-mr-mni all [--protocol one-largest]

Prints the count per structure, then the total and median per kind of structure.
"""

from __future__ import annotations

import argparse
import collections
import statistics

from napari_fewshot.core.engine import FewShotSession
from napari_fewshot.evaluation.cases import read_case, tasks_for
from napari_fewshot.evaluation.kinds import kind
from napari_fewshot.evaluation.protocols import PROTOCOLS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"))
    parser.add_argument("--protocol", default="one-largest", choices=[p for p in PROTOCOLS if p != "cross"])
    args = parser.parse_args()
    counts: dict[str, list[int]] = collections.defaultdict(list)
    for folder, *values in args.case:
        case = read_case(folder, values)
        session = FewShotSession(case.image, spacing=case.spacing)
        for task in tasks_for(case, args.protocol, [case]):
            examined = len(session.segment(task.painting()).examined[1])
            counts[kind(case.structure(task.value))].append(examined)
            print(f"{case.name} {case.structure(task.value)}: {examined} of {len(case.image)} slices", flush=True)
    every = [n for group in counts.values() for n in group]
    print("\n| kind (structures) | slices examined, total | median |\n|---|---|---|")
    for name, group in sorted(counts.items()) + [("all", every)]:
        print(f"| {name} ({len(group)}) | {sum(group)} | {statistics.median(group):g} |")


if __name__ == "__main__":
    main()
