"""Whose boundary to trust on each slice: the engine's, registration's, or a rule combining them.

For every structure of the cases, the engine (``follow_anatomy`` off) and the
registration peer segment it once under each protocol; then each rule combines the
two masks slice by slice, and the mean whole-volume Dice per rule is printed (per
kind of structure and over all), beside two oracles that pick the best per
structure or per slice with the truth known.  ``follow_anatomy``'s rule is
``bounded-empty-cut`` (the product carries the painting on crops and stops at the
engine's gaps, so its own run scores within about 0.01 of this).

    .venv/bin/python benchmarks/boundary_rules.py --case ../shared/data/abdomen-ct all \\
        --case ../shared/data/abdomen-mr all --case ../shared/data/brain-mr-mni all

Prints a Markdown table per protocol.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable

import numpy as np
from kind_table import print_kind_table
from scipy import ndimage

from napari_fewshot.core.features import FeatureCache
from napari_fewshot.core.postprocess import connected_to
from napari_fewshot.core.preprocess import Preprocessing, normalise_intensities
from napari_fewshot.evaluation.cases import Task, read_case, tasks_for
from napari_fewshot.evaluation.kinds import kind
from napari_fewshot.evaluation.methods import Context, EngineMethod, RegistrationMethod
from napari_fewshot.evaluation.metrics import dice

Rule = Callable[[np.ndarray, np.ndarray, Task], np.ndarray]


def _slice_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a.sum(axis=(1, 2)) + b.sum(axis=(1, 2))
    return np.where(total > 0, 2 * (a & b).sum(axis=(1, 2)) / np.maximum(total, 1), 1.0)


def _where(base: np.ndarray, replace: np.ndarray, by: np.ndarray) -> np.ndarray:
    """``base`` with the slices ``replace`` (``[Z]`` bool) taken from ``by``."""
    combined = base.copy()
    combined[replace] = by[replace]
    return combined


def _both(engine: np.ndarray, registered: np.ndarray) -> np.ndarray:
    return engine.any(axis=(1, 2)) & registered.any(axis=(1, 2))


def _bounded(engine: np.ndarray, registered: np.ndarray, grow: int) -> np.ndarray:
    grown = ndimage.binary_dilation(engine, np.ones((1, 2 * grow + 1, 2 * grow + 1), bool)) if grow else engine
    return registered & grown


def _agreeing(threshold: float) -> Rule:
    return lambda e, r, task: _where(e, _both(e, r) & (_slice_dice(e, r) >= threshold), r)


def _intensity_kept(deviations: float) -> Rule:
    """The bounded rule, but the engine's mask where the bounded mask's mean intensity lies more than
    ``deviations`` standard deviations from the painting's."""
    bounded_rule = _bounded_rule(1, "empty")

    def rule(engine: np.ndarray, registered: np.ndarray, task: Task) -> np.ndarray:
        volume = normalise_intensities(task.case.image, Preprocessing.for_volume(task.case.image))
        painted = [volume[z][task.truth[z]] for z in task.support_slices]
        mean, spread = np.mean([p.mean() for p in painted]), np.mean([p.std() for p in painted]) + 1e-3
        bounded = bounded_rule(engine, registered, task)
        far = np.array([_both(engine, registered)[z] and (not bounded[z].any()
                        or abs(volume[z][bounded[z]].mean() - mean) > deviations * spread) for z in range(len(volume))])
        return _where(bounded, far, engine)
    return rule


def _bounded_rule(grow: int, missed: str) -> Rule:
    """Registration inside the engine's mask grown by ``grow`` pixels; where they miss: ``keep`` the engine's,
    leave it ``empty``, or leave it empty and ``cut`` what is cut off from the painting."""
    def rule(engine: np.ndarray, registered: np.ndarray, task: Task) -> np.ndarray:
        bounded = _bounded(engine, registered, grow)
        use = _both(engine, registered)
        if missed == "keep":
            use &= bounded.any(axis=(1, 2))
        combined = _where(engine, use, bounded)
        return connected_to(combined, task.painting() > 0) if missed == "cut" else combined
    return rule


RULES: dict[str, Rule] = {
    "engine": lambda e, r, task: e,
    "registration-where-engine": lambda e, r, task: _where(e, _both(e, r), r),
    **{f"agreeing-{t}": _agreeing(t) for t in (0.3, 0.5, 0.7)},
    **{f"intensity-within-{d}sd": _intensity_kept(d) for d in (0.5, 1.0, 2.0)},
    "bounded-keep": _bounded_rule(1, "keep"),
    **{f"bounded-empty-grow{g}": _bounded_rule(g, "empty") for g in (0, 1, 2, 4)},
    "bounded-empty-cut": _bounded_rule(1, "cut"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"))
    parser.add_argument("--protocols", nargs="+", default=["one-largest", "three"], choices=["one-largest", "one-middle", "three"])
    args = parser.parse_args()
    cases = [read_case(folder, values) for folder, *values in args.case]
    context = Context(device="cpu", cache=FeatureCache())
    engine = EngineMethod("alpnet+nofollow")
    for protocol in args.protocols:
        scores: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
        for case in cases:
            for task in tasks_for(case, protocol, cases):
                e, r = engine(task, context), RegistrationMethod()(task, context)
                masks = {name: rule(e, r, task) for name, rule in RULES.items()}
                structure = kind(case.structure(task.value))
                for name, mask in masks.items():
                    scores[name].append((structure, dice(mask, task.truth)))
                candidates = [masks[n] for n in ("engine", "registration-where-engine", "bounded-empty-grow1")]
                scores["oracle-per-structure"].append((structure, max(dice(m, task.truth) for m in candidates)))
                gains = [2 * (m & task.truth).sum(axis=(1, 2)) - m.sum(axis=(1, 2)) for m in candidates]  # to Dice
                best = np.stack(candidates)[np.argmax(gains, axis=0), np.arange(len(e))]
                scores["oracle-per-slice"].append((structure, dice(best, task.truth)))
                print(case.name, case.structure(task.value), f"{dice(masks['bounded-empty-cut'], task.truth):.3f}",
                      flush=True)
        print_kind_table(protocol, "rule", scores)


if __name__ == "__main__":
    main()
