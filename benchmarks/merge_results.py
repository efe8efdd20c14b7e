"""One ``napari-fewshot evaluate`` result from several runs of it: the tasks split over processes, merged.

On a machine with many cores (or a GPU) the broad benchmark runs fastest as many
processes, each ``evaluate`` over a few structures of one case, one protocol and
one method, reading the encoded volumes from a shared ``--cache``.  This merges
their ``results.json`` files into one ``results.json`` and ``results.md``, the
same tables one ``evaluate`` over everything writes.

    .venv/bin/python benchmarks/merge_results.py RUN/results.json ... [--encode-from WARM/results.json ...] --out DIR

The rows keep the order of the files given, so the method named first (the one
the others are compared with) goes first.  The encoding times are those of the
``--encode-from`` runs (those that filled the cache; their rows are left out),
else each case's first.  The files must come from the same machine, device,
runtime and encoder; a task given twice is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_fewshot.evaluation.report import markdown

#: Settings that must agree between the merged runs.
SAME = ("machine", "device", "runtime", "encoder", "repeats", "nsd_tolerance_mm")


def merged(results: list[dict], encoded: list[dict] = ()) -> dict:
    """One result holding every row of ``results`` (``evaluate``'s dicts), the first's settings and dates, and the
    encoding times of ``encoded`` (runs whose rows are left out) before those of ``results``."""
    first = results[0]
    for other in [*results[1:], *encoded]:
        differing = [key for key in SAME if other[key] != first[key]]
        if differing:
            raise SystemExit(f"the runs differ in {', '.join(differing)}: merge only runs made alike")
    rows, seen, cases, encode = [], set(), {}, {}
    for result in [*encoded, *results]:
        for case, entry in result["encode"].items():
            encode.setdefault(case, entry)
    for result in results:
        cases.update(result["cases"])
        for row in result["rows"]:
            task = (row["method"], row["protocol"], row["case"], row["value"], row["support"])
            if "chooser" in row:  # in rounds, a row per chooser and round
                task += (row["chooser"], row["round"])
            if task in seen:
                raise SystemExit(f"the task {task} is in two runs: merge each task once")
            seen.add(task)
            rows.append(row)
    dates = sorted({result["date"] for result in results})
    commands = [result["command"] for result in results if "command" in result]
    return {**{key: first[key] for key in SAME}, "date": " to ".join(dict.fromkeys((dates[0], dates[-1]))),
            "cases": cases, "encode": encode, "rows": rows,
            **({"command": "\n    ".join(dict.fromkeys(commands))} if commands else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of evaluate runs")
    parser.add_argument("--encode-from", nargs="+", type=Path, default=[], metavar="RESULTS",
                        help="results.json of the runs that filled the cache: their encoding times, not their rows")
    parser.add_argument("--out", required=True, type=Path, help="where the merged results.json and results.md go")
    args = parser.parse_args()
    result = merged(*([json.loads(path.read_text()) for path in paths] for paths in (args.results, args.encode_from)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "results.md").write_text(markdown(result))
    print(f"{len(result['rows'])} rows from {len(args.results)} runs: {args.out / 'results.json'}, "
          f"{args.out / 'results.md'}")


if __name__ == "__main__":
    main()
