"""Write docs/results.md, and the results table of the README, from the benchmark runs of today's defaults.

    .venv/bin/python scripts/results_page.py docs/benchmarks/default-one/results.json \
        docs/benchmarks/default-three/results.json [--gpu docs/benchmarks/broad-cuda/results.json] \
        [--workflow docs/benchmarks/default-multi/results.json docs/benchmarks/default-rounds/results.json]

Each ``results.json`` is one ``napari-fewshot evaluate`` run (its first method is the
engine's default, the others the peers, all side by side on one machine); ``--gpu``,
a run on a GPU whose seconds are quoted; ``--workflow``, runs of the engine alone as a
clinician works (``multi``, ``multi-three``: every structure painted into one support;
``rounds``: corrections in rounds), whose comparisons are quoted as ``evaluate`` writes them.
The page holds only what these runs
measured: per protocol, the mean whole-volume Dice (in the structure's extent) per
kind of structure, and the median seconds per structure.  The README's table
between ``<!-- results -->`` and ``<!-- /results -->`` is written anew from the same
runs.  The experiments that led to these defaults are in docs/experiments/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from napari_fewshot.evaluation.kinds import KINDS, OTHER
from napari_fewshot.evaluation.protocols import TOGETHER
from napari_fewshot.evaluation.report import kind_means, rounds_lines, together_lines

ROOT = Path(__file__).resolve().parent.parent
PAGE, README = ROOT / "docs" / "results.md", ROOT / "README.md"
BEGIN, END = "<!-- results -->", "<!-- /results -->"
#: How the page names a protocol.
PROTOCOL_NAMES = {"one-largest": "one painted slice (the structure's largest)",
                  "three": "three painted slices (1/6, 1/2 and 5/6 of the structure's extent)"}


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["method"] for row in rows))


def _median_seconds(rows: list[dict], method: str) -> float:
    return statistics.median(row["seconds"] for row in rows if row["method"] == method)


def workflow(runs: list[dict]) -> list[str]:
    """Markdown lines: the engine as a clinician works, from the ``multi`` and ``rounds`` runs."""
    lines = []
    for run in runs:
        rows, protocols = run["rows"], dict.fromkeys(row["protocol"] for row in run["rows"])
        header = [f"{run['date']}, {run['machine']}, {run['runtime']}:", "", f"    {run['command']}", ""]
        if "rounds" in protocols:
            rounds = [r for r in rows if r["protocol"] == "rounds"]
            lines += ["## Corrections in rounds", "", *header, *rounds_lines(rounds)[2:]]
        together = [p for p in protocols if p in TOGETHER]
        if together:
            lines += ["## Several structures in one painting", "", *header]
            for protocol in together:
                lines += together_lines(rows, protocol)
    return lines


def page(runs: list[dict], gpu: dict | None, workflow_runs: list[dict] = ()) -> str:
    """The Markdown of docs/results.md."""
    lines = ["# Results at today's defaults", "",
             "Written by `scripts/results_page.py` from the runs below; each names the command that repeats it. "
             "Whole volume scored: every slice is predicted, false positives on slices without the structure count. "
             "The first method of each run is the engine's default; the others are the peers, run side by side. "
             "How the defaults were chosen: [experiments/](experiments/README.md).", ""]
    for run in runs:
        rows = run["rows"]
        for protocol in dict.fromkeys(row["protocol"] for row in rows):
            mine = [row for row in rows if row["protocol"] == protocol]
            methods = _methods(mine)
            lines += [f"## {PROTOCOL_NAMES.get(protocol, protocol).capitalize()}", "",
                      f"{run['date']}, {run['machine']}, {run['runtime']}:", "", f"    {run['command']}", "",
                      "Mean Dice per kind of structure, whole volume (in the structure's extent):", "",
                      *kind_means(mine, methods), "",
                      "| method | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|",
                      "| median seconds per structure, features cached | "
                      + " | ".join(f"{_median_seconds(mine, m):.2f}" for m in methods) + " |", ""]
        encode = run["encode"]
        slices, seconds = sum(e["slices"] for e in encode.values()), sum(e["seconds"] for e in encode.values())
        cached = " (read back from the feature cache an earlier run filled)" if seconds / slices < 0.05 else ""
        lines += [f"Encoding the {len(encode)} scans: {slices} slices in {seconds:.0f} s{cached}.", ""]
    if gpu is not None:
        lines += ["## On a GPU", "", f"{gpu['date']}, {gpu['machine']}, {gpu['runtime']} (the engine's default of "
                  "that day; later rules are not in it):", ""]
        if "command" in gpu:
            lines += [f"    {gpu['command']}", ""]
        first = _methods(gpu["rows"])[0]
        for protocol in dict.fromkeys(row["protocol"] for row in gpu["rows"]):
            mine = [row for row in gpu["rows"] if row["protocol"] == protocol]
            lines.append(f"- {PROTOCOL_NAMES.get(protocol, protocol)}: `{first}` "
                         f"{_median_seconds(mine, first):.2f} s median per structure, features cached")
        lines.append("")
    return "\n".join(lines + workflow(workflow_runs))


def readme_table(runs: list[dict], gpu: dict | None) -> str:
    """The README's table: mean whole-volume Dice per kind, the default and the peers, one and three slices."""
    columns: list[tuple[str, str, list[dict]]] = []
    for run in runs:
        for protocol in dict.fromkeys(row["protocol"] for row in run["rows"]):
            mine = [row for row in run["rows"] if row["protocol"] == protocol]
            short = "1 slice" if protocol == "one-largest" else "3 slices" if protocol == "three" else protocol
            columns += [(f"{'**default**' if i == 0 else m}, {short}", m, mine) for i, m in enumerate(_methods(mine))
                        if m != "interpolation" or protocol != "one-largest"]  # one painting: itself, not a method
    kinds = [k for k in (*KINDS, OTHER) if any(row["kind"] == k for _, _, rows in columns for row in rows)]
    lines = ["| kind | " + " | ".join(name for name, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind in [*kinds, "all"]:
        cells = [np.mean([r["dice"] for r in rows if r["method"] == m and kind in ("all", r["kind"])])
                 for _, m, rows in columns]
        lines.append(f"| {kind} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    lines.append("| seconds (CPU) | " + " | ".join(f"{_median_seconds(rows, m):.1f}" for _, m, rows in columns) + " |")
    structures = len({(r["case"], r["value"]) for r in runs[0]["rows"]})
    note = (f"Mean whole-volume Dice over the development data's {structures} structures; seconds: the median per "
            f"structure with the scan's features cached, on the development machine ({runs[0]['machine']}; "
            f"{runs[0]['runtime']}).")
    if gpu is not None:
        first = _methods(gpu["rows"])[0]
        note += (f" On a GPU ({gpu['runtime']}, {gpu['date']}, the default of that day, before later rules) the "
                 f"engine took {_median_seconds(gpu['rows'], first):.1f} s.")
    return "\n".join([*lines, "", note + " Every number, and the command: [docs/results.md](docs/results.md)."])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="results.json of the default's runs, with the peers")
    parser.add_argument("--gpu", type=Path, help="results.json of a run on a GPU")
    parser.add_argument("--workflow", nargs="+", type=Path, default=[],
                        help="results.json of the engine's multi and rounds runs")
    args = parser.parse_args()
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.runs]
    gpu = json.loads(args.gpu.read_text(encoding="utf-8")) if args.gpu else None
    workflow_runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.workflow]
    PAGE.write_text(page(runs, gpu, workflow_runs), encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        print(f"{README} has no {BEGIN} ... {END} block; only {PAGE} was written", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{readme_table(runs, gpu)}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    print(f"written: {PAGE}, the table of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
