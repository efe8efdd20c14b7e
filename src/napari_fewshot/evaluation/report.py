"""The results of :func:`~napari_fewshot.evaluation.run.evaluate` as Markdown tables and PNG plots."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from .kinds import KINDS, OTHER
from .protocols import PROTOCOLS


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def _ordered(rows: list[dict], key: str) -> list:
    return list(dict.fromkeys(row[key] for row in rows))


def _protocols(rows: list[dict]) -> list[str]:
    """The protocols of ``rows`` in the order of :data:`PROTOCOLS`."""
    return sorted(_ordered(rows, "protocol"), key=PROTOCOLS.index)


def _column(row: dict) -> str:
    support = "" if row["support"] == row["case"] else f" from {row['support']}"
    return f"{row['case']} {row['structure']}{support}"


def paired(rows: list[dict], reference: str, other: str, metric: str = "dice") -> tuple[int, float, float | None]:
    """Tasks both methods ran, the mean of ``reference - other`` in ``metric``, and the Wilcoxon signed-rank p-value (None when undefined)."""
    scores = defaultdict(dict)
    for row in rows:
        scores[(row["case"], row["value"], row["support"])][row["method"]] = row[metric]
    pairs = [(s[reference], s[other]) for s in scores.values() if reference in s and other in s]
    if not pairs:
        return 0, math.nan, None
    differences = np.array([a - b for a, b in pairs])
    p = float(stats.wilcoxon(differences).pvalue) if len(pairs) > 1 and np.any(differences) else None
    return len(pairs), float(differences.mean()), p


def kind_means(rows: list[dict], methods: list[str]) -> list[str]:
    """Markdown lines: per kind of structure (and over all), each method's mean Dice, whole volume and in the extent.

    ``rows``: one protocol's rows; a kind's line counts its structures and
    averages only the methods that ran on them.
    """
    by_kind = _by(rows, "kind")
    kinds = [k for k in (*KINDS, OTHER) if (k,) in by_kind]
    lines = ["| kind (structures) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, group in [(k, by_kind[(k,)]) for k in kinds] + [("all", rows)]:
        cells = []
        for method in methods:
            mine = [r for r in group if r["method"] == method]
            cells.append(f"{np.mean([r['dice'] for r in mine]):.3f} ({np.mean([r['dice_extent'] for r in mine]):.3f})"
                         if mine else "–")
        count = len(_by(group, "case", "value", "support"))
        lines.append(f"| {name} ({count}) | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """Per protocol: Dice per structure and method, means per kind, a summary (Dice, HD95, NSD, time, memory), paired tests."""
    rows = results["rows"]
    lines = []
    for protocol in _protocols(rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        methods, columns = _ordered(mine, "method"), list(dict.fromkeys(_column(r) for r in mine))
        cell = {(r["method"], _column(r)): r for r in mine}
        lines += [f"### Protocol `{protocol}`", "", "Dice (" + ("the query's extent" if protocol == "cross" else "whole volume") + "):", ""]
        lines += ["| method | " + " | ".join(columns) + " | mean |", "|---" * (len(columns) + 2) + "|"]
        for name in methods:
            values = [cell[(name, c)]["dice"] if (name, c) in cell else None for c in columns]
            done = [v for v in values if v is not None]
            lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in values) + f" | {np.mean(done):.3f} |")
        lines += ["", "Mean Dice per kind of structure, whole volume (in the structure's extent):", ""]
        lines += kind_means(mine, methods)
        lines += ["", "| method | mean Dice | mean Dice in extent | median HD95 mm (empty) | mean NSD | median seconds | process peak MiB |", "|---|---|---|---|---|---|---|"]
        for name in methods:
            group = [r for r in mine if r["method"] == name]
            distances = [r["hd95_mm"] for r in group if r["hd95_mm"] is not None]
            lines.append(
                f"| {name} | {np.mean([r['dice'] for r in group]):.3f} | {np.mean([r['dice_extent'] for r in group]):.3f} | "
                f"{statistics.median(distances) if distances else math.nan:.1f} ({len(group) - len(distances)}) | "
                f"{np.mean([r['nsd'] for r in group]):.3f} | {statistics.median(r['seconds'] for r in group):.2f} | "
                f"{max(r['peak_mib'] for r in group):.0f} |"
            )
        reference = methods[0]
        if len(methods) > 1:
            lines += ["", f"Paired over structures, `{reference}` minus each other method (whole-volume Dice; Wilcoxon signed-rank):", ""]
        for name in methods[1:]:
            n, difference, p = paired(mine, reference, name)
            lines.append(f"- vs `{name}`: {difference:+.3f} over {n} structures, p = {'n/a' if p is None else f'{p:.3g}'}")
        lines.append("")
    if results["encode"]:
        lines += ["Encoding (once per volume; the first segmentation of an encoder method is this plus its seconds):", ""]
        lines += ["| case | slices | seconds | peak MiB |", "|---|---|---|---|"]
        lines += [f"| {name} | {e['slices']} | {e['seconds']:.1f} | {e['peak_mib']:.0f} |" for name, e in results["encode"].items()]
    return "\n".join(lines) + "\n"


def plots(results: dict, folder: Path) -> list[Path]:
    """``dice-<protocol>.png`` (Dice per structure and method) and ``seconds.png`` (time per method); the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError as error:
        raise RuntimeError("plots need matplotlib: pip install 'napari-fewshot[bench]'") from error
    folder.mkdir(parents=True, exist_ok=True)
    rows, written = results["rows"], []
    for protocol in _protocols(rows):
        mine = [r for r in rows if r["protocol"] == protocol]
        methods, columns = _ordered(mine, "method"), list(dict.fromkeys(_column(r) for r in mine))
        cell = {(r["method"], _column(r)): r["dice"] for r in mine}
        figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(columns) * max(1, len(methods) / 4)), 4))
        width = 0.8 / len(methods)
        for i, name in enumerate(methods):
            axes.bar(np.arange(len(columns)) + i * width, [cell.get((name, c), 0) for c in columns], width, label=name)
        axes.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns, rotation=20, ha="right", fontsize=8)
        axes.set_ylabel("Dice")
        axes.set_ylim(0, 1)
        axes.set_title(f"protocol {protocol}")
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        written.append(folder / f"dice-{protocol}.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)
    methods = _ordered(rows, "method")
    seconds = [statistics.median(r["seconds"] for r in rows if r["method"] == m) for m in methods]
    figure, axes = plt.subplots(figsize=(max(5, 0.9 * len(methods)), 3.5))
    axes.bar(methods, seconds)
    axes.set_yscale("log")
    axes.set_ylabel("median seconds per structure\n(features cached)")
    axes.tick_params(axis="x", rotation=30, labelsize=8)
    figure.tight_layout()
    written.append(folder / "seconds.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)
    return written
