"""Run methods on labelled volumes under protocols and measure them side by side, in one process.

Every method of a run meets the same tasks on the same machine.  Volumes are
encoded once per run (timed on their own as ``encode``); every method that
needs the encoder then reads the same cached features, so its seconds are those
of a re-segmentation, and a first segmentation costs ``encode`` plus that.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from ..core.backends import resolve_runtime
from .cases import Case, Task, tasks_for
from .kinds import kind
from .memory import peak_mib, reset_peak
from .methods import Context, Method
from .metrics import dice, hd95, surface_dice
from .protocols import extent
from .rounds import CHOOSERS, ROUNDS, simulate


def machine() -> str:
    """This machine in a few words: processor, cores, torch version."""
    return f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores, torch {torch.__version__}"


def score(prediction: np.ndarray, task: Task, tolerance_mm: float = 1.0) -> dict[str, float | None]:
    """Dice, Dice on the structure's extent, HD95 (mm, None when one mask is empty) and surface Dice of ``prediction``.

    Only the slices the protocol scores count (``task.scored()``).
    """
    scored = task.scored()
    predicted, truth = prediction[scored], task.truth[scored]
    first, last = extent(truth)
    distance = hd95(predicted, truth, task.case.spacing)
    return {
        "dice": dice(predicted, truth),
        "dice_extent": dice(predicted[first : last + 1], truth[first : last + 1]),
        "hd95_mm": distance if math.isfinite(distance) else None,
        "nsd": surface_dice(predicted, truth, task.case.spacing, tolerance_mm),
    }


def check_settings(repeats: int, rounds: int, tolerance_mm: float) -> None:
    """``ValueError`` saying which is wrong unless there is a run per method and task at least, no negative number
    of rounds, and a finite surface Dice tolerance above 0 mm."""
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1 (runs per method and task); got {repeats}")
    if rounds < 0:
        raise ValueError(f"--rounds must be 0 or more (rounds of correction after the first run); got {rounds}")
    if not (tolerance_mm > 0 and math.isfinite(tolerance_mm)):
        raise ValueError(f"--nsd-mm must be a finite length in mm above 0; got {tolerance_mm}")


def evaluate(
    cases: list[Case],
    protocols: list[str],
    methods: list[Method],
    *,
    context: Context,
    repeats: int = 3,
    tolerance_mm: float = 1.0,
    rounds: int = ROUNDS,
    log: Callable[[str], None] = print,
) -> dict:
    """Every method on every task of ``protocols`` over ``cases``; a JSON-ready dict of settings, encode times and rows.

    Each row: case, structure, its kind (:func:`~napari_fewshot.evaluation.kinds.kind`), protocol, method, support slices, the scores of
    :func:`score`, the median seconds of ``repeats`` runs and the peak resident
    memory (MiB) while the method ran.  With every structure painted together (``multi``), the
    seconds are those of the one run, and the row tells where the structure competed with
    another (:func:`~napari_fewshot.evaluation.metrics.claims`).  In ``rounds`` a row per
    chooser and round (:func:`~napari_fewshot.evaluation.rounds.simulate`, ``rounds`` rounds).
    ``ValueError`` for settings :func:`check_settings` refuses.
    """
    check_settings(repeats, rounds, tolerance_mm)
    encode, ran = {}, None
    for encoder in dict.fromkeys(e for m in methods if (e := m.encoder(context)) is not None):
        for case in cases:
            reset_peak()
            started = time.perf_counter()
            session = context.sessions.session(case, case.image, spacing=case.spacing, encoder=encoder,
                                               cache=context.cache, **context.runtime)
            session.encode()
            ran = session.trunk.runtime  # what encoded: float32 where the CPU lacks bfloat16, torch after a fallback
            name = case.name if encoder == context.encoder else f"{case.name} ({encoder})"
            encode[name] = {"seconds": time.perf_counter() - started, "slices": len(case.image), "peak_mib": peak_mib()}
            log(f"{name}: encoded {len(case.image)} slices in {encode[name]['seconds']:.1f} s")
    rows = []
    for protocol in protocols:
        for case in cases:
            for task in tasks_for(case, protocol, cases):
                for method in methods:
                    if (task.support_case is not None and not method.cross_volume) or (
                            task.together is not None and not method.paints_together):
                        continue
                    if protocol == "rounds":
                        rows += _rounds(method, task, context, rounds, tolerance_mm, log)
                        continue
                    rows.append(_measure(method, task, context, repeats, tolerance_mm))
                    _log_row(rows[-1], log)
    return {
        "machine": machine(), "device": str(context.device),
        "runtime": str(ran or resolve_runtime(**context.runtime)),
        "encoder": context.encoder, "repeats": repeats,
        "nsd_tolerance_mm": tolerance_mm, "date": time.strftime("%Y-%m-%d"),
        "cases": {c.name: {"shape": list(c.image.shape), "spacing_mm": list(c.spacing)} for c in cases},
        "encode": encode, "rows": rows,
    }


def _log_row(row: dict, log: Callable[[str], None]) -> None:
    log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "seconds_all"))


def _about(task: Task, method: Method) -> dict:
    """What a row says of its task and method."""
    return {
        "case": task.case.name, "structure": task.case.structure(task.value), "value": task.value,
        "kind": kind(task.case.structure(task.value)),
        "protocol": task.protocol, "method": method.name,
        "support": task.support_case.name if task.support_case else task.case.name,
        "support_slices": list(task.support_slices),
    }


def _measure(method: Method, task: Task, context: Context, repeats: int, tolerance_mm: float) -> dict:
    reset_peak()
    seconds, prediction = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        prediction = method(task, context)
        seconds.append(time.perf_counter() - started)
    together = {}
    if task.together is not None:  # the one run's seconds, and where this structure competed
        run = task.together.runs[method.name]
        seconds, together = [run["seconds"]], run["claims"][task.value]
    return {
        **_about(task, method), **score(prediction, task, tolerance_mm), **together,
        "seconds": statistics.median(seconds), "seconds_all": seconds, "peak_mib": peak_mib(),
    }


def _rounds(method: Method, task: Task, context: Context, rounds: int, tolerance_mm: float,
            log: Callable[[str], None]) -> list[dict]:
    """A row per chooser and round of a user correcting ``task`` with ``method`` (none for a method that takes no
    part in rounds)."""
    segment = method.segmenter(task, context)
    if segment is None:
        return []
    rows = []
    for chooser in CHOOSERS:
        runs = simulate(segment, task, chooser, rounds, score=lambda mask: score(mask, task, tolerance_mm))
        for run in runs:
            rows.append({**_about(task, method), "chooser": chooser, **run})
        log(f"{task.case.name} {task.case.structure(task.value)} {method.name} {chooser}: Dice by round "
            + " ".join(f"{run['dice']:.3f}" for run in runs))
    return rows
