"""Seconds per slice of the encoder and the box decoder on each backend and precision, side by side.

Real slices of ``../shared/data/abdomen-ct`` (the development data; ``--data`` to
change) around its liver go through LiteMedSAM's encoder on every runtime asked
for, in interleaved rounds in one process (so each round's runtimes share the
machine's load), then LiteMedSAM's decoder with box prompts.  Also measured:
converting the encoder for OpenVINO (an empty model cache) and compiling it
again from the cache; and the first whole-volume segmentation of the liver from
one painted slice (its largest) on each backend, features not cached, the
default options (from the painted slice outward), and on the last backend also
of every slice.  Printed first: the CPU's model and the flags that decide its
precisions (bfloat16, VNNI and AMX instructions); ``openvino:int8`` is quantized
with an empty model cache too (seconds, once per weights file).

    .venv/bin/python benchmarks/latency.py [--runtimes torch:f32 openvino:int8 openvino:f32 openvino:bf16] \
        [--slices 16] [--rounds 3] [--ahead 30 60] [--json OUT.json]

On a machine with CUDA add ``torch:f16`` and ``--device cuda``, and shorter ``--ahead`` (a GPU
encodes the volume in seconds).  Prints Markdown tables with the medians and ratios, the
machine's load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abdomen-ct"
LIVER = 5
#: The CPU flags printed: what decides the precisions a CPU runs fast.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def cpu() -> str:
    """The CPU's model name and which of :data:`FLAGS` it has."""
    from napari_fewshot.core.runtime import cpu_flags

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.partition(":")[2].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = cpu_flags()
    return f"{model}, {os.cpu_count()} logical CPUs; " + " ".join(f"{f}{'+' if f in flags else '-'}" for f in FLAGS)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_inputs(image: np.ndarray, spacing: tuple[float, float, float], count: int) -> torch.Tensor:
    """``count`` consecutive slices around the volume's middle as LiteMedSAM's input ``[count, 3, 256, 256]``."""
    from napari_fewshot.core.preprocess import Preprocessing, intensity_window, normalise_intensities, to_encoder_slices

    preprocessing = Preprocessing.for_volume(image)
    middle = len(image) // 2
    chosen = image[max(0, middle - count // 2) : max(0, middle - count // 2) + count]
    normalised = normalise_intensities(chosen, preprocessing, intensity_window(image, preprocessing))
    return to_encoder_slices(normalised, 256, spacing[1] / spacing[2])


def time_encoders(runtimes, encoder, slices: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    """Seconds per slice of each runtime's trunk over ``slices``, once per round (after one warm-up batch)."""
    from napari_fewshot.core.backends import trunk_runner

    trunks = {name: trunk_runner(encoder, runtime) for name, runtime in runtimes.items()}
    for trunk in trunks.values():
        trunk(slices[: trunk.batch_size()])
    times: dict[str, list[float]] = {name: [] for name in trunks}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, trunk in trunks.items():
            synchronise(trunk.runtime.device)
            started = time.perf_counter()
            batch = trunk.batch_size()
            outputs[name] = torch.cat([trunk(slices[i : i + batch]).cpu() for i in range(0, len(slices), batch)])
            synchronise(trunk.runtime.device)
            times[name].append((time.perf_counter() - started) / len(slices))
    reference = outputs[next(iter(outputs))]
    for name, output in outputs.items():
        cosine = torch.nn.functional.cosine_similarity(output.flatten(1).double(), reference.flatten(1).double())
        times[name + " cosine"] = [float(cosine.mean())]
        times[name + " max abs diff"] = [float((output - reference).abs().max())]
    return times


def time_decoders(runtimes, embeddings: torch.Tensor, boxes: np.ndarray, shape, rounds: int) -> dict[str, list[float]]:
    from napari_fewshot.core.sam_decoder import BoxDecoder

    decoders = {name: BoxDecoder(runtime) for name, runtime in runtimes.items()}
    for decoder in decoders.values():
        decoder.decode(embeddings[:2], boxes[:2], shape)
    times: dict[str, list[float]] = {name: [] for name in decoders}
    masks = {}
    for _ in range(rounds):
        for name, decoder in decoders.items():
            started = time.perf_counter()
            masks[name] = decoder.decode(embeddings, boxes, shape)
            times[name].append((time.perf_counter() - started) / len(boxes))
    reference = masks[next(iter(masks))]
    for name, mask in masks.items():
        times[name + " pixels differing"] = [float(np.count_nonzero(mask != reference))]
    return times


def time_conversion(encoder, runtimes) -> dict[str, float]:
    """Seconds to convert and compile the trunk with an empty model cache, then to compile it from the cache;
    for each of ``runtimes`` in turn (at int8 the quantization follows the conversion)."""
    from napari_fewshot.core.openvino_backend import OpenVINOTrunk

    previous, seconds = os.environ.get("NAPARI_FEWSHOT_CACHE"), {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NAPARI_FEWSHOT_CACHE"] = folder
        try:
            for runtime in runtimes:
                started = time.perf_counter()
                OpenVINOTrunk(encoder, runtime)
                cold = time.perf_counter() - started
                started = time.perf_counter()
                OpenVINOTrunk(encoder, runtime)
                step = "quantize" if runtime.precision == "int8" else "convert"
                seconds[f"{runtime.precision}: {step} and compile (empty cache)"] = cold
                seconds[f"{runtime.precision}: compile from the cache"] = time.perf_counter() - started
        finally:
            os.environ.pop("NAPARI_FEWSHOT_CACHE") if previous is None else os.environ.update(NAPARI_FEWSHOT_CACHE=previous)
    return seconds


def time_segmentation(runtimes, image, support, spacing, truth) -> dict[str, dict]:
    """The first segmentation of the volume on each runtime (features not cached), from the painted slice
    outward (the default) and, on the last runtime, of every slice; Dice to the first and to the truth."""
    from napari_fewshot.core.engine import segment
    from napari_fewshot.core.features import FeatureCache

    runs = [(name, runtime, False) for name, runtime in runtimes.items()]
    runs.append((f"{runs[-1][0]} every slice", runs[-1][1], True))
    results, first = {}, None
    for name, runtime, every_slice in runs:
        started = time.perf_counter()
        result = segment(image, support, spacing=spacing, device=str(runtime.device), backend=runtime.backend,
                         precision=runtime.precision, every_slice=every_slice, cache=FeatureCache())
        labels = result.labels > 0
        first = labels if first is None else first
        results[name] = {"seconds": time.perf_counter() - started, "encode": result.seconds["encode"],
                         "encoded slices": result.encoded_slices, "runtime": str(result.runtime),
                         "dice to the first run": dice(labels, first), "dice to the truth": dice(labels, truth)}
    return results


def time_after_ahead(runtime, image, support, spacing, truth, ahead_seconds: float) -> dict:
    """The segmentation after ``ahead_seconds`` of encoding ahead (as the widget does while the user paints:
    from the slice on screen, the painted one, outward), features not cached before."""
    from napari_fewshot.core.engine import encode_volume, segment
    from napari_fewshot.core.errors import SegmentationCancelled
    from napari_fewshot.core.features import FeatureCache

    cache, deadline = FeatureCache(), time.perf_counter() + ahead_seconds
    painted = int(np.flatnonzero(support.any(axis=(1, 2)))[0])
    order = sorted(range(len(image)), key=lambda z: (abs(z - painted), z))
    options = dict(spacing=spacing, device=str(runtime.device), backend=runtime.backend, precision=runtime.precision)
    try:
        encode_volume(image, slices=order, cache=cache, cancel=lambda: time.perf_counter() > deadline, **options)
    except SegmentationCancelled:
        pass
    time.sleep(max(0.0, deadline - time.perf_counter()))
    started = time.perf_counter()
    result = segment(image, support, cache=cache, **options)
    return {"ahead s": ahead_seconds, "seconds": time.perf_counter() - started, "encoded slices": result.encoded_slices,
            "dice to the truth": dice(result.labels > 0, truth)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a folder with image.nii.gz and label.nii.gz")
    parser.add_argument("--runtimes", nargs="+", metavar="BACKEND:PRECISION",
                        help="default: torch:f32 openvino:int8 openvino:f32, and openvino:bf16 where the CPU has it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-segmentation", action="store_true", help="skip the whole-volume segmentations")
    parser.add_argument("--ahead", nargs="+", type=float, default=[30.0, 60.0], metavar="SECONDS",
                        help="seconds of encoding ahead before the last segmentations (default 30 60)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from napari_fewshot.core.store import DEFAULT_STORE
    from napari_fewshot.core.backends import resolve_runtime
    from napari_fewshot.core.runtime import cpu_flags, runs_natively
    from napari_fewshot.evaluation.protocols import painted, support_slices
    from napari_fewshot.io import read_volume

    if args.runtimes is None:
        bf16 = ["openvino:bf16"] if runs_natively("bf16", cpu_flags()) else []
        args.runtimes = ["torch:f32", "openvino:int8", "openvino:f32", *bf16]  # the last: what auto takes
    report: dict = {"cpu": cpu(), "load before": load(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()}
    volume = read_volume(args.data / "image.nii.gz")
    image, spacing = volume.data, tuple(volume.geometry.spacing[::-1])
    runtimes = {}
    for spec in args.runtimes:
        backend, _, precision = spec.partition(":")
        runtimes[spec] = resolve_runtime(backend, precision or "auto", args.device)
    encoder = DEFAULT_STORE.encoder("litemedsam", next(iter(runtimes.values())).device)
    if any(r.backend == "openvino" for r in runtimes.values()):
        converted = [resolve_runtime("openvino", "f32", "cpu")]
        converted += [r for r in runtimes.values() if r.backend == "openvino" and r.precision == "int8"]
        report["openvino conversion"] = time_conversion(encoder, converted)
    slices = encoder_inputs(image, spacing, args.slices)
    report["encoder"] = time_encoders(runtimes, encoder, slices, args.rounds)
    with torch.inference_mode():
        embeddings = encoder.trunk(slices[:8].to(encoder.reduce.weight.device)).cpu()
    boxes = np.tile(np.array([[60.0, 50.0, 190.0, 170.0]], np.float32), (len(embeddings), 1))
    decoder_runtimes = {r.backend: r.exact() for r in runtimes.values()}  # the decoder runs at float32
    report["decoder"] = time_decoders(decoder_runtimes, embeddings, boxes, image.shape[1:], args.rounds)
    if not args.no_segmentation:
        liver = read_volume(args.data / "label.nii.gz", kind="labels").data == LIVER
        support = painted(liver, support_slices(liver, "one-largest"))
        report["segmentation"] = time_segmentation(runtimes, image, support, spacing, liver)
        default = next(reversed(runtimes.values()))
        report["after encoding ahead"] = [time_after_ahead(default, image, support, spacing, liver, seconds)
                                          for seconds in args.ahead]
    report["load after"] = load()

    reference = next(iter(runtimes))
    print(f"CPU: {report['cpu']}")
    print(f"load before {report['load before']}, after {report['load after']}; torch {report['torch']}, "
          f"{report['threads']} threads; {args.slices} slices of {args.data.name}, {args.rounds} rounds\n")
    print("| runtime | encoder s/slice (median) | vs " + reference + " | cosine to " + reference
          + " | Dice of the first segmentation |\n|---|---|---|---|---|")
    base = statistics.median(report["encoder"][reference])
    for name in runtimes:
        median = statistics.median(report["encoder"][name])
        segmented = report.get("segmentation", {}).get(name)
        dice_shown = f"{segmented['dice to the truth']:.4f}" if segmented else "-"
        print(f"| {name} | {median:.3f} | {base / median:.1f}x | {report['encoder'][name + ' cosine'][0]:.5f} | "
              f"{dice_shown} |")
    print("\n| decoder (f32) | s/slice (median) | pixels differing from the first |\n|---|---|---|")
    for name in decoder_runtimes:
        decoder = report["decoder"]
        print(f"| {name} | {statistics.median(decoder[name]):.3f} | {decoder[name + ' pixels differing'][0]:.0f} |")
    for step, seconds in report.get("openvino conversion", {}).items():
        print(f"\nOpenVINO, {step}: {seconds:.1f} s")
    for name, row in report.get("segmentation", {}).items():
        print(f"\nfirst segmentation, {name} ({row['runtime']}): {row['seconds']:.1f} s, encoding "
              f"{row['encoded slices']} slices {row['encode']:.1f} s; Dice {row['dice to the truth']:.4f}, "
              f"{row['dice to the first run']:.4f} to the first run's")
    for row in report.get("after encoding ahead", []):
        print(f"\nafter {row['ahead s']:.0f} s of encoding ahead: {row['seconds']:.1f} s, encoding "
              f"{row['encoded slices']} slices; Dice {row['dice to the truth']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
