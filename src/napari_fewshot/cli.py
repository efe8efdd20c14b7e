"""Command line: ``napari-fewshot``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    import numpy as np

    from .core.prediction import SupportBuilder
    from .io import Volume


def _info(args: argparse.Namespace) -> int:
    from .core.intensity import guess_modality
    from .io import VolumeReadError, read_volume

    status = 0
    for path in args.paths:
        try:
            volume = read_volume(path, kind=args.kind, series=args.series, index=args.index)
        except VolumeReadError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
            continue
        g = volume.geometry
        kind = "label map" if volume.is_label_map else f"image ({guess_modality(volume.data)})"
        print(f"{path}: {kind}")
        print(f"  shape (z, y, x): {volume.data.shape}   pixel type: {g.pixel_type}")
        print(f"  spacing (x, y, z) mm: {g.spacing}")
        print(f"  origin (x, y, z) mm:  {g.origin}")
        print(f"  direction:            {g.direction}")
        print(f"  values: {volume.data.min()} .. {volume.data.max()}")
    return status


class ProgressBar:
    """``progress(done, total, seconds_left)`` as a bar on stderr with the time left, redrawn when the
    percentage or the whole seconds left change; it only moves forward, in at most ``most`` slices, its total
    "about" while it is an ``estimate`` (:class:`~napari_fewshot.core.progress.ForwardProgress`)."""

    def __init__(self, label: str, width: int = 30, most: int | None = None, estimate: bool = True) -> None:
        from .core.progress import ForwardProgress

        self.label, self.width, self.shown = label, width, None
        self.forward = ForwardProgress(most, estimate=estimate)

    def __call__(self, done: int, total: int, seconds_left: float | None = None) -> None:
        shown = self.forward(done, total, seconds_left)
        percent = int(100 * shown.fraction)
        line = self.forward.text()
        if (percent, line) == self.shown:
            return
        self.shown = percent, line
        filled = int(self.width * shown.fraction)
        clear = "\033[K" if sys.stderr.isatty() else ""  # what a shorter line leaves of a longer one
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}% ({line}){clear}")
        if shown.fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _probability_paths(template: str, values: Sequence[int]) -> dict[int, str]:
    """Where each structure's probability volume goes: ``template`` itself for one, ``{label}`` filled in for several."""
    if len(values) == 1 and "{label}" not in template:
        return {values[0]: template}
    if "{label}" not in template:
        raise ValueError(
            f"--probabilities {template}: the support paints {len(values)} structures; "
            "put {label} in the file name to write one volume per structure (e.g. prob_{label}.nii.gz)"
        )
    return {value: template.replace("{label}", str(value)) for value in values}


def _segment(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.support_labels is None):
        print("error: give --support-labels (few-shot from painted slices) or --model (a refined model), one of them",
              file=sys.stderr)
        return 2
    if args.model is not None:
        return _segment_with_model(args)
    import numpy as np

    from .core.engine import FewShotSession
    from .core.errors import SegmentationError
    from .core.features import FeatureCache
    from .core.inputs import checked_labels
    from .core.options import SegmentOptions, option_fields
    from .core.support import painted_structures
    from .io import VolumeError, check_same_grid, check_writable, read_volume

    try:
        image = read_volume(args.image, kind="image", series=args.series, index=args.index)
        support_image = read_volume(args.support_image, kind="image") if args.support_image else image
        support, names = _read_support(args.support_labels, support_image)
        names = _names(args.names) or names
        check_same_grid(support, support_image)
        checked_labels(support.data, support_image.data.shape, args.support_image is None)  # before the model loads
        inputs = [path for path in (args.image, args.support_image, args.support_labels) if path]
        _check_labels_output(args.output, image, inputs)
        probability_paths = {}
        if args.probabilities:
            probability_paths = _probability_paths(args.probabilities, list(painted_structures(support.data)))
            for path in probability_paths.values():
                check_writable(path, image.geometry, [*inputs, args.output])
        settings = dict({name: getattr(args, name) for name in ("encoder", "head", "weights") if getattr(args, name)},
                        device=args.device, backend=args.backend, precision=args.precision, modality=args.modality,
                        cache=FeatureCache() if args.no_disk_cache else None)
        session = FewShotSession(image.data, spacing=image.geometry.spacing[::-1], **settings)
        painted_on = FewShotSession(support_image.data, spacing=support_image.geometry.spacing[::-1],
                                    role="support image", **settings) if args.support_image else None
        options = SegmentOptions(**{name: value for name, _ in option_fields()
                                    if (value := getattr(args, name)) is not None})
        result = session.segment(support.data, options, support=painted_on, absent=_absent(args.absent, names),
                                 progress=ProgressBar("segmenting", most=len(image.data) + (
                                     len(support_image.data) if args.support_image else 0)))
        _write_labels(args.output, result.labels, image, names, [  # all or none: the labels and probabilities of one run
            (path, result.probabilities[value], image.geometry.with_pixel_type("float32"))
            for value, path in probability_paths.items()
        ])
    except (VolumeError, SegmentationError, ValueError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    counts = {v: int(np.count_nonzero(result.labels == v)) for v in result.support_slices}
    seconds = result.seconds
    print(
        f"{args.output}: {', '.join(f'label {v}: {n} voxels' for v, n in counts.items())} "
        f"({result.encoder} + {result.head}; encoder on {result.runtime}; "
        f"{seconds['total']:.1f} s, of which encoding {result.encoded_slices} slices {seconds['encode']:.1f} s)"
    )
    return 0


def _segment_with_model(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from .core.errors import SegmentationError
    from .core.refined import segment_with_model
    from .io import VolumeError, read_volume

    started = time.perf_counter()
    try:
        image = read_volume(args.image, kind="image", series=args.series, index=args.index)
        names = _names(args.names)
        _check_labels_output(args.output, image)
        labels = segment_with_model(image.data, args.model, spacing=image.geometry.spacing[::-1],
                                    modality=args.modality, device=args.device)
        _write_labels(args.output, labels, image, names)
    except (VolumeError, SegmentationError, ValueError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    counts = {int(v): int(np.count_nonzero(labels == v)) for v in np.unique(labels) if v}
    print(f"{args.output}: {', '.join(f'label {v}: {n} voxels' for v, n in counts.items()) or 'nothing found'} "
          f"(refined model {args.model}; {time.perf_counter() - started:.1f} s)")
    return 0


def _names(text: str | None) -> dict[int, str]:
    """Structure names by label value from ``--names`` (none when not given); ``ValueError`` names a bad entry."""
    from ._napari.structures import parse_names

    return parse_names(text) if text else {}


def _absent(items: Sequence[str] | None, names: dict[int, str]) -> dict[int, list[int]]:
    """``--absent`` entries (``VALUE:SLICES``, the value or a structure's name, slices as ``40,41`` or ``0-10``)
    as slice indices per label value; ``ValueError`` names a bad entry."""
    by_name = {name.lower(): value for value, name in names.items()}
    absent: dict[int, list[int]] = {}
    for item in items or ():
        structure, _, slices = item.rpartition(":")
        structure = structure.strip()
        value = int(structure) if structure.isdigit() else by_name.get(structure.lower())
        try:
            if value is None:
                raise ValueError
            marked = []
            for part in slices.split(","):
                first, _, last = part.strip().partition("-")
                marked += list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(
                f"--absent {item}: give a label value (or a name from --names) and slices, e.g. --absent 2:40,41 "
                "or --absent liver:0-10"
            ) from None
        absent.setdefault(value, []).extend(marked)
    return absent


def _read_support(path: str, support_image: Volume) -> tuple[Volume, dict[int, str]]:
    """The support label map, and the structure names a DICOM SEG support gives (read onto ``support_image``'s series)."""
    from .io import VolumeReadError, read_volume
    from .io.formats import is_seg_path

    if not is_seg_path(path):
        return read_volume(path, kind="labels"), {}
    if support_image.dicom is None:
        raise VolumeReadError(
            f"{path}: a DICOM SEG is read onto the DICOM series it was made on; give that series' folder as "
            "--image (or --support-image)"
        )
    from .io.dicom_seg import read_seg

    return read_seg(path, support_image.geometry, support_image.dicom)


def _check_labels_output(path: str, image: Volume, inputs: Sequence[str] = ()) -> None:
    """Refuse, before the work, an output the labels of ``image`` cannot be written to (DICOM SEG for ``.dcm``)."""
    from .io import check_writable
    from .io.formats import is_seg_path

    if is_seg_path(path):
        from .io.dicom_seg import check_seg_writable

        check_seg_writable(path, image.geometry, image.dicom, inputs)
    else:
        check_writable(path, image.geometry, inputs)


def _write_labels(
    path: str, labels: np.ndarray, image: Volume, names: dict[int, str], others: Sequence[tuple[str, np.ndarray, Any]] = ()
) -> None:
    """Write ``labels`` of ``image`` to ``path`` (a DICOM SEG of its series for ``.dcm``) and the volumes ``others``.

    All or none: the labels and the probabilities of one run.
    """
    from .io import write_volumes
    from .io.formats import is_seg_path

    if is_seg_path(path):
        from .io.dicom_seg import seg_target, seg_writer

        target = seg_target(path, image.geometry, image.dicom)  # seg_writer reads the headers and builds the SEG
        write_volumes(others, writers={target: seg_writer(target, labels, image.geometry, image.dicom, names)})
    else:
        write_volumes([(path, labels, image.geometry.with_pixel_type(str(labels.dtype))), *others])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-fewshot",
        description="Few-shot segmentation of CT and MRI volumes: paint one slice, segment the volume.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="print the geometry of volumes (NIfTI, NRRD, MHA, DICOM folders)")
    info.add_argument("paths", nargs="+", metavar="PATH")
    info.add_argument("--kind", choices=("auto", "image", "labels"), default="auto")
    _add_choice_arguments(info, "each PATH")
    info.set_defaults(run=_info)

    seg = commands.add_parser(
        "segment",
        help="segment a volume from the slices painted in a support label volume",
        description="Predict the painted structures on every slice; the output has the image's geometry.",
    )
    seg.add_argument("--image", required=True, metavar="PATH", help="the volume to segment (file or DICOM folder)")
    _add_choice_arguments(seg, "--image")
    seg.add_argument(
        "--support-labels", metavar="PATH",
        help="labels on the support image's grid; its non-zero slices are the support (value v = structure v); "
        "or a DICOM SEG (.dcm) of the support image's DICOM series (segment v = structure v)",
    )
    seg.add_argument("--model", metavar="PATH",
                     help="instead of a support: a model from 'napari-fewshot refine' (its folder or model file)")
    seg.add_argument("--support-image", metavar="PATH", help="the volume the support was painted on (default: --image)")
    seg.add_argument("--output", required=True, metavar="PATH",
                     help="predicted labels (.nii.gz, .nii, .nrrd, .mha; or .dcm: a DICOM SEG of the --image series, "
                     "for a DICOM folder)")
    seg.add_argument("--absent", action="append", metavar="VALUE:SLICES",
                     help="a structure is not on these slices (first slice 0, along the image's slice axis), nor "
                     "past them on the side away from where it is painted: e.g. 2:40,41 or liver:0-10 (a name from "
                     "--names); repeatable. A slice painted for one structure says nothing of the others")
    seg.add_argument("--names", metavar="TEXT",
                     help="structure names, e.g. 'liver, spleen' (labels 1, 2) or '1: liver, 3: kidney', for the "
                     "segments of a .dcm output (default: the segment names of a DICOM SEG support, else 'structure N')")
    seg.add_argument("--encoder", help="litemedsam (the default), resnet101-coco or tiny")
    seg.add_argument("--head", help="alpnet (the default), dspnet or panet")
    seg.add_argument(
        "--weights", metavar="default|none|PATH",
        help="trained weights: default (the model shipped for the encoder and head), none (untrained), "
        "or a model.safetensors from 'napari-fewshot train'",
    )
    _add_runtime_arguments(seg)
    seg.add_argument("--modality", choices=("CT", "MR"), help="override the detection from the intensities")
    _add_option_arguments(seg)
    seg.add_argument("--no-disk-cache", action="store_true",
                     help="keep the encoded slices in memory only (default: also in your cache folder, so a scan "
                     "segmented before is not encoded again)")
    seg.add_argument(
        "--probabilities", metavar="PATH",
        help="also write foreground probabilities (float32); with several structures put {label} in the name",
    )
    seg.set_defaults(run=_segment)
    _add_train_parser(commands)
    _add_refine_parser(commands)
    _add_evaluate_parser(commands)
    return parser


def _add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~napari_fewshot.core.options.SegmentOptions` field, from its declaration: a switch for
    a yes/no option (``--no-...`` too where its default is "where possible"), a value checked by the option's
    own check, or one of its choices.  A flag not given leaves the option at its default."""
    from .core.options import option_field, option_fields

    for name, spec in option_fields():
        kind = option_field(name).type
        flag = spec.flag or f"--{name.replace('_', '-')}"
        arguments: dict[str, Any] = dict(dest=name, default=None, help=spec.help.replace("%", "%%"))
        if kind == "bool":
            arguments["action"] = "store_true"
        elif kind == "bool | None":
            arguments["action"] = argparse.BooleanOptionalAction
        elif spec.choices:
            arguments["choices"] = spec.choices
        else:
            arguments.update(type=_option_value(name, spec), metavar=spec.metavar)
        parser.add_argument(flag, **arguments)


def _option_value(name: str, spec: Any) -> Any:
    """An option's value from its flag's text, refused by argparse (which names the flag) as the option refuses it."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(name, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the engine runs: the device, and the backend and precision of its encoder and decoder."""
    from .core.backends import BACKENDS, PRECISIONS

    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="what runs the encoder and decoder: auto (default: openvino on the CPU, torch on a GPU), "
                        "torch or openvino (falls back to torch, with a warning, where it cannot run)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the encoder's precision: auto (default: bf16 with openvino where the CPU has bfloat16 "
                        "instructions, else f32; f16 on CUDA), f32, bf16, f16 or int8 (openvino: quantized once per "
                        "weights file)")


def _add_choice_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--series`` and ``--index``: which series of a DICOM folder, which time point or channel of a file, to read."""
    parser.add_argument("--series", metavar="UID", help=f"DICOM series UID of {what}, for a folder that holds several")
    parser.add_argument("--index", type=int, metavar="N",
                        help=f"time point or channel of {what}, for a 4D or multi-channel file")


def _add_config_arguments(parser: argparse.ArgumentParser, config: type, flags: dict[str, dict[str, Any]]) -> None:
    """A flag per field of the dataclass ``config`` named in ``flags`` (``--field-name``; the value: argparse's
    keywords, ``help`` among them), whose default and type come from the field: a switch for a yes/no field, the
    default said in the help.  :func:`_config` reads them back."""
    for item in fields(config):
        if item.name not in flags:
            continue
        arguments = dict(flags[item.name], dest=item.name)
        if item.default is not MISSING:
            default = item.default
            arguments["default"] = default
            if isinstance(default, bool):
                arguments["action"] = "store_true"
            elif default is not None:
                arguments.setdefault("type", type(default))
                shown = f"{default:g}" if isinstance(default, float) else default
                arguments["help"] = f"{arguments['help']} (default {shown})"
        parser.add_argument(f"--{item.name.replace('_', '-')}", **arguments)


def _config(args: argparse.Namespace, config: type, **values: Any) -> Any:
    """The dataclass ``config`` from the flags :func:`_add_config_arguments` made, and ``values``."""
    given = {item.name: getattr(args, item.name) for item in fields(config) if hasattr(args, item.name)}
    return config(**{**given, **values})


#: The flags every training run has (:func:`_add_config_arguments`).
RUN_FLAGS: dict[str, dict[str, Any]] = {
    "checkpoint_every": dict(metavar="N", help="steps between checkpoints"),
    "log_every": dict(metavar="N", help="steps between log lines"),
    "seed": dict(help="random seed"),
    "device": dict(help="auto, cpu, cuda or mps"),
}


def _add_train_parser(commands: argparse._SubParsersAction) -> None:
    from .train.pseudolabels import SUPERPIXELS
    from .train.trainer import TrainConfig

    train = commands.add_parser(
        "train",
        help="self-supervised training on unlabelled images (superpixel episodes); runs under torchrun too",
        description="Train the projection and head (and, unless --freeze-encoder, the encoder) without labels. "
        "Resumes from OUT/checkpoint.pt when there is one. Under 'torchrun --nproc_per_node=N' the ranks "
        "train together (DistributedDataParallel).",
    )
    _add_config_arguments(train, TrainConfig, {
        "images": dict(nargs="+", required=True, metavar="PATH", help="images to train on (no labels)"),
        "out": dict(required=True, metavar="DIR", type=Path, help="the run's folder: checkpoint, log, cache, model"),
        "encoder": dict(help="litemedsam, resnet101-coco or tiny"),
        "head": dict(help="dspnet, alpnet or panet"),
        "freeze_encoder": dict(help="keep the encoder's trunk fixed: its features are computed once and cached "
                               "(fast on a CPU)"),
        "steps": dict(help="training steps (one episode per rank each)"),
        "supervoxels": dict(help="3D supervoxels: the query is a nearby slice of the support's supervoxel"),
        "query_reach": dict(metavar="N", help="with --supervoxels, the query is at most N slices from the support"),
        "absent_queries": dict(metavar="P", help="with --supervoxels, the share of episodes whose query is a slice "
                               "just past the supervoxel's end, to be predicted empty"),
        "superpixels": dict(choices=SUPERPIXELS, help="2D superpixel method"),
        "slice_mm": dict(metavar="MM", help="train on slices at least this far apart (0: every slice)"),
        "lr": dict(help=f"SGD learning rate (x{TrainConfig.lr_gamma:g} every {TrainConfig.lr_step} steps)"),
        **RUN_FLAGS,
        "cache": dict(metavar="DIR", type=Path, help="where prepared volumes are kept (default: OUT/cache)"),
    })
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from .train.trainer import TrainConfig, train

    config = _config(args, TrainConfig, command=["napari-fewshot", *sys.argv[1:]])
    return _run_training(train, config, f"trained for {config.steps} steps")


def _run_training(run: Any, config: Any, done: str) -> int:
    """``run(config, progress=...)`` with bars on stderr; the error, or (rank 0) the model file and what was ``done``."""
    from .core.errors import SegmentationError
    from .io import VolumeError

    bars = TrainingProgress()
    try:
        try:
            path = run(config, progress=bars)
        finally:
            bars.close()  # before the error, which is then the last line
    except (VolumeError, SegmentationError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"\nerror: {message}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{path}: {done} (log: {config.out / 'log.jsonl'})")
    return 0


def _add_refine_parser(commands: argparse._SubParsersAction) -> None:
    from .train.refine.trainer import METHODS, UNCERTAINTY, RefineConfig

    refine = commands.add_parser(
        "refine",
        help="train a segmentation network on your labelled slices and every unlabelled one (PCCS); runs under torchrun too",
        description="Semi-supervised refinement: a 2D U-Net learns from the slices painted in --labels (any number of "
        "structures) and, unlabelled, every other slice of --images. Apply it with 'napari-fewshot segment --model OUT'. "
        "Resumes from OUT/checkpoint.pt when there is one.",
    )
    _add_config_arguments(refine, RefineConfig, {
        "images": dict(nargs="+", required=True, metavar="PATH",
                       help="volumes: the first ones have --labels, the others are unlabelled"),
        "labels": dict(nargs="+", required=True, metavar="PATH",
                       help="label volumes of the first images; their non-zero slices are the labelled slices"),
        "out": dict(required=True, metavar="DIR", type=Path, help="the run's folder: checkpoint, log, model"),
        "method": dict(choices=METHODS, help="supervised, mean-teacher, pccs-frozen (a teacher that never learns) "
                       "or pccs"),
        "steps": dict(help="training steps"),
        "batch": dict(help="labelled slices per step, as many unlabelled"),
        "size": dict(help="slices are resized to this square"),
        "uncertainty": dict(choices=UNCERTAINTY, help="entropy of the student or of mc-dropout teacher passes"),
        "modality": dict(choices=("CT", "MR"), help="override the detection from the intensities"),
        **RUN_FLAGS,
    })
    refine.set_defaults(run=_refine)


def _refine(args: argparse.Namespace) -> int:
    from .train.refine.trainer import RefineConfig, refine

    config = _config(args, RefineConfig, command=["napari-fewshot", *sys.argv[1:]])
    return _run_training(refine, config, f"refined ({config.method}) for {config.steps} steps")


class TrainingProgress:
    """Bars on stderr for the trainer's ``progress(stage, done, total, values)``."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int, values: dict[str, float]) -> None:
        from tqdm import tqdm

        if stage not in self.bars:
            unit = "volume" if stage == "prepare" else "step"
            self.bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, initial=done)
        bar = self.bars[stage]
        if values:
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()}, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    from .evaluation.methods import BASELINES, method_flags
    from .evaluation.protocols import PROTOCOLS
    from .evaluation.rounds import ROUNDS

    evaluate = commands.add_parser(
        "evaluate",
        help="benchmark methods on labelled volumes: Dice, HD95, surface Dice, time and memory, side by side",
        description="Run this project's engine and the peers (LiteMedSAM box prompts, registration, interpolation "
        "between painted slices, the copy floor) on the same tasks in one process; write OUT/results.json, "
        "OUT/results.md and plots.",
    )
    evaluate.add_argument(
        "--case", nargs="+", action="append", required=True, metavar=("DIR", "LABEL"),
        help="a folder with image.* and label.* (and labels.json naming the values), then the label values (or names) to "
        "test, or 'all': every structure on at least 5 slices; repeatable. Results are also averaged per kind of structure",
    )
    evaluate.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=["one-largest"],
                          help="which slices are painted and scored (default one-largest): one-largest, one-middle, "
                          "three (1/6, 1/2, 5/6 of the extent), cross (from another case), multi and multi-three "
                          "(every structure of a case painted into one support as one-largest or three, one run), "
                          "rounds (the largest slice, then one more slice painted or marked absent per round, chosen "
                          "by the tool's Slices to check, by the largest error, or by a fixed plan)")
    evaluate.add_argument(
        "--methods", nargs="+", metavar="METHOD",
        default=["alpnet", "alpnet+prototype", "dspnet", "alpnet@none", "dspnet@none+prototype", "panet@none+prototype",
                 *BASELINES],
        help="HEAD[@WEIGHTS][:KEEP][+FLAG...] for the engine (weights: default, none or a model file; keep: "
        "painted, largest or all; flags, each setting one of the segmentation options: "
        f"{', '.join(f'+{flag}' + ('=VALUE' if value is None else '') for flag, (_, value) in method_flags().items())}), "
        f"or one of {', '.join(BASELINES)}; the first is compared with the others",
    )
    evaluate.add_argument("--encoder", default="litemedsam",
                          help="the engine's encoder (default litemedsam); litemedsam-box always uses LiteMedSAM")
    evaluate.add_argument("--repeats", type=int, default=3, help="runs per method and task; seconds are their median")
    evaluate.add_argument("--rounds", type=int, default=ROUNDS, metavar="N",
                          help=f"rounds of correction after the first run in protocol rounds (default {ROUNDS})")
    evaluate.add_argument("--nsd-mm", type=float, default=1.0, help="tolerance of the surface Dice in mm (default 1)")
    _add_runtime_arguments(evaluate)
    evaluate.add_argument("--cache", metavar="DIR",
                          help="keep the encoded volumes here, so that a later run with the same cases encodes nothing")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="where results.json, results.md and the plots go")
    evaluate.set_defaults(run=evaluate_command)


def evaluate_command(args: argparse.Namespace, build_support: SupportBuilder | None = None) -> int:
    """``napari-fewshot evaluate`` with the parsed ``args``; ``build_support``: how the engine builds its supports
    (a benchmark's variation, :class:`~napari_fewshot.core.prediction.SupportBuilder`; default the engine's)."""
    import json
    from pathlib import Path

    from .core.errors import SegmentationError
    from .core.features import FeatureCache
    from .evaluation.cases import read_case
    from .evaluation.methods import Context, method
    from .evaluation.report import markdown, plots
    from .evaluation.run import check_settings, evaluate
    from .io import VolumeError, check_output_folder
    from .io.write import atomic_write

    try:
        check_output_folder(args.out)
        if args.cache:  # a folder the user named: refused before hours of work, not given up after them
            check_output_folder(args.cache)
        check_settings(args.repeats, args.rounds, args.nsd_mm)  # before the cases are read
        methods = [method(name) for name in args.methods]
        cases = [read_case(folder, values) for folder, *values in args.case]
        results = evaluate(
            cases, args.protocols, methods, repeats=args.repeats, rounds=args.rounds,
            context=Context(device=args.device, encoder=args.encoder, backend=args.backend, precision=args.precision,
                            cache=FeatureCache(folder=args.cache, advice="--cache names another folder"),
                            build_support=build_support),
            tolerance_mm=args.nsd_mm, log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        results["command"] = " ".join(["napari-fewshot", *sys.argv[1:]])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", markdown(results))):
            atomic_write(out / name, lambda temporary, text=text: temporary.write_text(text, encoding="utf-8"))
    except (VolumeError, SegmentationError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    written = plots(results, out)
    print(markdown(results))
    print(f"written: {out / 'results.json'}, {out / 'results.md'}, " + ", ".join(str(p) for p in written))
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the command is, so that it ends as Ctrl-C does (files being written are removed, not
    left half-written), with the exit status of a SIGTERM."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-fewshot`` command; returns the exit status (130 when interrupted, 143 on SIGTERM).

    The handlers are in place before the parser is built, which imports torch (seconds): a signal then ends the
    command with its one line too.
    """
    import signal

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return args.run(args)
    except KeyboardInterrupt as stop:
        print("\ninterrupted: no output was left half-written (an interrupted train or refine run resumes from "
              "its last checkpoint when run again)", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(stop, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
