"""Command line: ``napari-fewshot``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


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
    info.add_argument("--series", help="DICOM series UID, for a folder that holds several")
    info.add_argument("--index", type=int, help="time point or channel of a 4D or multi-channel file")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-fewshot`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
