"""A benchmark's scores as a Markdown table: mean whole-volume Dice per kind of structure, one row per method."""

from __future__ import annotations

import collections

import numpy as np


def print_kind_table(title: str, column: str, scores: dict[str, list[tuple[str, float]]],
                     metric: str = "whole-volume Dice") -> None:
    """Print ``title`` and a table whose first ``column`` names each of ``scores``' keys, then its mean per kind.

    scores : per method (or rule), ``(kind, score)`` for every structure it segmented; ``metric`` names the score.
    """
    counts = collections.Counter(k for k, _ in next(iter(scores.values())))
    kinds = sorted(counts)
    print(f"\n{title}: mean {metric}\n\n| {column} | " + " | ".join(f"{k} ({counts[k]})" for k in kinds)
          + f" | all ({sum(counts.values())}) |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for name, rows in scores.items():
        per_kind = [np.mean([d for k, d in rows if k == each]) for each in kinds]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in per_kind) + f" | {np.mean([d for _, d in rows]):.3f} |")
