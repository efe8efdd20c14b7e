"""Refine (PCCS) against its ablations and the few-shot engine, from the same labelled slices.

Two steps, so that training can run on a machine that has only torch (a GPU box):

    # here: the training slices of each task (128 px: abdomen-ct's slices are 101x122), and the
    # few-shot engine scored on the same slices
    python benchmarks/refine.py prepare --case ../shared/data/abdomen-ct 5 1 --case ../shared/data/brain-mr-mni 1 \\
        --budgets 16 8 --size 128 --out runs/refine-benchmark --cache runs/features
    # anywhere: train every method on every task, score it, print the table (results.json beside the tasks)
    python benchmarks/refine.py train --tasks runs/refine-benchmark --methods supervised mean-teacher pccs-frozen pccs \\
        --steps 500 --device cuda

A task is one structure with ``budget`` labelled slices spread evenly over its
extent (the rest of the volume unlabelled).  Scores are whole-volume Dice,
Jaccard, HD95 and average surface distance (mm) against the truth, of the refined
model's largest 3D component (what ``segment --model`` writes by default; the
Dice of every component is kept too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_fewshot.core.device import resolve_device
from napari_fewshot.core.postprocess import largest_per_structure
from napari_fewshot.core.refined import load_refined, predict_slices
from napari_fewshot.evaluation.metrics import average_surface_distance, dice, hd95, jaccard
from napari_fewshot.train.refine.data import RefineData
from napari_fewshot.train.refine.trainer import METHODS, RefineConfig, refine

RESULTS = "results.json"


def scores(prediction: np.ndarray, truth: np.ndarray, spacing: list[float]) -> dict[str, float]:
    return {"dice": dice(prediction, truth), "jaccard": jaccard(prediction, truth),
            "hd95_mm": hd95(prediction, truth, spacing), "asd_mm": average_surface_distance(prediction, truth, spacing)}


def prepare(args: argparse.Namespace) -> None:
    from napari_fewshot.core.engine import segment
    from napari_fewshot.core.features import FeatureCache
    from napari_fewshot.core.preprocess import Preprocessing, slice_aspect
    from napari_fewshot.core.refined import model_input
    from napari_fewshot.evaluation.cases import read_case
    from napari_fewshot.evaluation.protocols import at_fractions, painted
    from napari_fewshot.train.refine.data import refine_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(folder=args.cache) if args.cache else None
    for folder, *values in args.case:
        case = read_case(folder, values)
        aspect = slice_aspect(case.spacing, 0)
        whole = model_input(case.image, Preprocessing.for_volume(case.image), args.size, aspect)
        for value in case.values:
            truth = case.truth == value
            for budget in args.budgets:
                slices = tuple(sorted(set(at_fractions(truth, tuple((i + 0.5) / budget for i in range(budget))))))
                labels = painted(truth, slices)
                data = refine_data([(case.image, aspect)], [labels], args.size)
                started = time.perf_counter()
                fewshot = segment(case.image, labels, spacing=case.spacing, device=args.device, cache=cache)
                seconds = time.perf_counter() - started
                name = f"{case.name} {case.structure(value)} {len(slices)}"
                np.savez_compressed(
                    out / f"{name.replace(' ', '_')}.npz", name=name, volume=_bytes(whole[:, 0]), slices=np.array(slices),
                    targets=data.targets.numpy().astype(np.uint8), truth=truth, spacing=np.array(case.spacing),
                    aspect=aspect, values=np.array(data.values), modality=data.modality,
                    fewshot=json.dumps({**scores(fewshot.labels == 1, truth, list(case.spacing)), "seconds": seconds}),
                )
                print(f"{name}: slices {list(slices)}, few-shot Dice {dice(fewshot.labels == 1, truth):.3f}", flush=True)


def _bytes(slices: torch.Tensor) -> np.ndarray:
    """Network input in [0, 1] as uint8 (256 levels: 1.6 HU in the CT window), to keep task files small."""
    return (slices.numpy() * 255).round().astype(np.uint8)


def train(args: argparse.Namespace) -> None:
    folder = Path(args.tasks)
    results_path = folder / RESULTS
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["task"], r["method"]) for r in results}
    device = resolve_device(args.device)
    for path in sorted(folder.glob("*.npz"), key=lambda p: (-int(p.stem.rsplit("_", 1)[1]), p.stem)):
        with np.load(path, allow_pickle=False) as task:
            task = dict(task)
        name, truth, spacing = str(task["name"]), task["truth"].astype(bool), task["spacing"].tolist()
        if (name, "few-shot engine") not in done:
            results.append({"task": name, "method": "few-shot engine", **json.loads(str(task["fewshot"]))})
        volume = torch.from_numpy(task["volume"]).float()[:, None] / 255
        labelled = np.isin(np.arange(len(volume)), task["slices"])
        data = RefineData(volume[labelled], torch.from_numpy(task["targets"]).long(), volume[~labelled],
                          tuple(task["values"].tolist()), str(task["modality"]))
        for method in args.methods:
            if (name, method) in done:
                continue
            out = folder / "runs" / f"{path.stem}-{method}"
            config = RefineConfig(images=[name], labels=[name], out=out, method=method,
                                  steps=args.steps, batch=args.batch, size=volume.shape[-1], device=args.device,
                                  log_every=max(args.steps // 10, 1), checkpoint_every=args.steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model = refine(config, data=data)
            seconds = time.perf_counter() - started
            network, _ = load_refined(model)
            labels = predict_slices(network, volume, truth.shape[1:], float(task["aspect"]), list(data.values), device)
            row = {"task": name, "method": method, **scores(largest_per_structure(labels) == data.values[0], truth, spacing),
                   "dice_all_components": dice(labels == data.values[0], truth),
                   "seconds": seconds, "seconds_per_step": seconds / args.steps, "device": str(device),
                   "steps": args.steps}
            results.append(row)
            results_path.write_text(json.dumps(results, indent=1))
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    results_path.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    """Markdown: one row per task and method, then the mean Dice per method and budget."""
    lines = ["| task | method | Dice | Jaccard | HD95 mm | ASD mm | seconds |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | {r['method']} | {r['dice']:.3f} | {r['jaccard']:.3f} | {r['hd95_mm']:.1f} | "
                     f"{r['asd_mm']:.2f} | {r['seconds']:.1f} |")
    budgets = sorted({r["task"].rsplit(" ", 1)[1] for r in results}, key=int)
    methods = list(dict.fromkeys(r["method"] for r in results))
    dice_of = {(r["task"], r["method"]): r["dice"] for r in results}
    # means over the tasks every method finished, so that the columns compare like with like
    complete = {b: sorted(t for t in {r["task"] for r in results} if t.endswith(f" {b}")
                          and all((t, m) in dice_of for m in methods)) for b in budgets}
    lines += ["", "| method | " + " | ".join(f"mean Dice, {b} slices ({len(complete[b])} tasks)" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for method in methods:
        means = [np.mean([dice_of[t, method] for t in complete[b]]) if complete[b] else np.nan for b in budgets]
        lines.append(f"| {method} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    first = steps.add_parser("prepare")
    first.add_argument("--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"))
    first.add_argument("--budgets", nargs="+", type=int, default=[16, 8])
    first.add_argument("--size", type=int, default=128)
    first.add_argument("--device", default="auto")
    first.add_argument("--cache", help="encoded volumes of earlier runs (napari-fewshot evaluate --cache)")
    first.add_argument("--out", required=True)
    second = steps.add_parser("train")
    second.add_argument("--tasks", required=True)
    second.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    second.add_argument("--steps", type=int, default=500)
    second.add_argument("--batch", type=int, default=8)
    second.add_argument("--device", default="auto")
    third = steps.add_parser("report")
    third.add_argument("--tasks", required=True)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args)
    elif args.step == "train":
        train(args)
    else:
        print(table(json.loads((Path(args.tasks) / RESULTS).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
