"""The results of :func:`~napari_fewshot.evaluation.run.evaluate` as Markdown tables and PNG plots."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from .kinds import KINDS, OTHER
from .protocols import PROTOCOLS, TOGETHER
from .rounds import area_under


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
        if protocol == "rounds":
            lines += rounds_lines(mine)
            continue
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
        if protocol in TOGETHER:
            lines += together_lines(rows, protocol)
    if results["encode"]:
        lines += ["Encoding (once per volume; the first segmentation of an encoder method is this plus its seconds):", ""]
        lines += ["| case | slices | seconds | peak MiB |", "|---|---|---|---|"]
        lines += [f"| {name} | {e['slices']} | {e['seconds']:.1f} | {e['peak_mib']:.0f} |" for name, e in results["encode"].items()]
    return "\n".join(lines) + "\n"


def together_lines(rows: list[dict], protocol: str) -> list[str]:
    """Markdown lines: per kind, each engine method's mean Dice with every structure painted into one support
    (``protocol``) beside one structure per run (the protocol it paints as, when the rows hold it), and how often
    structures competed for a voxel and who won."""
    alone_protocol = TOGETHER[protocol]
    together = [r for r in rows if r["protocol"] == protocol]
    alone = {(r["case"], r["value"], r["method"]): r["dice"] for r in rows if r["protocol"] == alone_protocol}
    lines = [f"Every structure painted into one support (`{protocol}`) against one structure per run "
             f"(`{alone_protocol}`), mean whole-volume Dice:", "",
             "| method | kind (structures) | one per run | together | together minus one per run |",
             "|---|---|---|---|---|"]
    for method in _ordered(together, "method"):
        mine = [r for r in together if r["method"] == method and (r["case"], r["value"], method) in alone]
        by_kind = _by(mine, "kind")
        for name, group in [(k, by_kind[(k,)]) for k in (*KINDS, OTHER) if (k,) in by_kind] + [("all", mine)]:
            single = np.mean([alone[(r["case"], r["value"], method)] for r in group])
            joint = np.mean([r["dice"] for r in group])
            lines.append(f"| {method} | {name} ({len(group)}) | {single:.3f} | {joint:.3f} | {joint - single:+.3f} |")
    contested = [r for r in together if "contested" in r]
    if contested:
        total = sum(r["contested"] for r in contested)
        won = sum(r["won"] for r in contested)
        rightly = sum(r["won_rightly"] for r in contested)
        lost = sum(r["lost_own"] for r in contested)
        lines += ["", f"Voxels claimed by two structures or more (both above the threshold): {total // 2:,} "
                  f"(counted once per claimant: {total:,}, over {len(contested)} structures); the most probable won "
                  f"{won:,} claims, {rightly:,} of them rightly (the truth's structure), and {lost:,} claims were "
                  "lost by the structure the truth gives the voxel.", ""]
        top = sorted(contested, key=lambda r: -r["lost_own"])[:5]
        lines += ["Most voxels lost to another structure though their own:", ""]
        lines += [f"- {r['case']} {r['structure']} ({r['method']}): contested {r['contested']:,}, won {r['won']:,}, "
                  f"lost its own {r['lost_own']:,}" for r in top]
    return lines + [""]


def rounds_lines(rows: list[dict]) -> list[str]:
    """Markdown lines for ``rounds`` rows: per method and chooser, mean Dice after each round, the area under
    the curve, the structures that fell by more than 0.01 from one round to the next, and the seconds per round;
    then per kind, the mean Dice after three rounds (or the last)."""
    lines = ["### Protocol `rounds`", ""]
    last = max(r["round"] for r in rows)
    after = min(3, last)
    for method in _ordered(rows, "method"):
        mine = [r for r in rows if r["method"] == method]
        lines += [f"`{method}`: mean whole-volume Dice after each round (round 0: the largest slice painted), the "
                  "area under the Dice-by-round curve, structures whose Dice fell by more than 0.01 from one round "
                  "to the next, and the median seconds of a round (features cached):", "",
                  "| chooser | " + " | ".join(f"round {i}" for i in range(last + 1))
                  + " | area under | falls > 0.01 | median s per round |",
                  "|---" * (last + 5) + "|"]
        for chooser in _ordered(mine, "chooser"):
            runs = _by([r for r in mine if r["chooser"] == chooser], "case", "value")
            curves = [[r["dice"] for r in sorted(group, key=lambda r: r["round"])] for group in runs.values()]
            means = np.mean(curves, axis=0)
            falls = sum(any(b < a - 0.01 for a, b in zip(c[:-1], c[1:])) for c in curves)
            seconds = [r["seconds"] for r in mine if r["chooser"] == chooser and r["round"] > 0
                       and r["action"] != "stopped"]
            lines.append(f"| {chooser} | " + " | ".join(f"{m:.3f}" for m in means)
                         + f" | {np.mean([area_under(c) for c in curves]):.3f} | {falls} of {len(curves)} | "
                         + f"{statistics.median(seconds) if seconds else math.nan:.2f} |")
        done = [r for r in mine if r["round"] == after]
        choosers = _ordered(done, "chooser")
        by_kind = _by(done, "kind")
        lines += ["", f"`{method}`: mean Dice per kind after round {after}:", "",
                  "| kind (structures) | " + " | ".join(choosers) + " |", "|---" * (len(choosers) + 1) + "|"]
        for name, group in [(k, by_kind[(k,)]) for k in (*KINDS, OTHER) if (k,) in by_kind] + [("all", done)]:
            cells = [f"{np.mean([r['dice'] for r in group if r['chooser'] == c]):.3f}" for c in choosers]
            count = len(_by(group, "case", "value"))
            lines.append(f"| {name} ({count}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plots(results: dict, folder: Path) -> list[Path]:
    """``dice-<protocol>.png`` (Dice per structure and method) and ``seconds.png`` (time per method); the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError as error:
        raise RuntimeError("plots need matplotlib: pip install 'napari-fewshot[bench]'") from error
    folder.mkdir(parents=True, exist_ok=True)
    rows, written = [r for r in results["rows"] if r["protocol"] != "rounds"], []
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
    if not rows:
        return written
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
