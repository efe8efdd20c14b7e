"""Fuzz the readers: mutated NIfTI, NRRD and MetaImage headers must read or raise VolumeReadError.

Small valid files of each kind (NIfTI ``.nii``/``.nii.gz``, NRRD raw/gzip and a
detached ``.nhdr``, MetaImage raw/compressed) are mutated by hypothesis: a
number of the text header replaced by an extreme one, header bytes or lines
changed, a NIfTI header field set to an extreme value, the file truncated or
extended.  Each mutated file is read with ``read_volume``.  Anything but a
volume or :class:`VolumeReadError` fails, and so does an example slower than
``--deadline`` seconds, or the process's peak memory beyond ``--max-mib``
(the files are a few KB: no reader should allocate what a header claims).
A crash (ITK's segmentation faults) ends the process; the file being read is
printed before each read, so the last line names it.

    .venv/bin/python benchmarks/fuzz_readers.py --examples 3000 --seed 1

Prints the outcome counts (the CI test runs it with a small budget).
"""

from __future__ import annotations

import argparse
import gzip
import resource
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from napari_fewshot.io import VolumeReadError, read_volume

#: Values a mutated header field or number takes: edges of the integer types, zero, negatives, non-finite.
EXTREMES = ["0", "-1", "1", "3", "5", "255", "32767", "-32768", "65535", "2147483647", "-2147483648",
            "4294967296", "9223372036854775807", "1e308", "-1e308", "1e-308", "nan", "inf", "-inf", "0.5", "", "x",
            "1 2", "1 2 3 4 5 6 7 8 9 10 11 12 13"]

#: NIfTI-1 header fields: (byte offset, struct format).
NIFTI_FIELDS = {
    "sizeof_hdr": (0, "i"), "dim0": (40, "h"), "dim1": (42, "h"), "dim2": (44, "h"), "dim3": (46, "h"),
    "dim4": (48, "h"), "dim5": (50, "h"), "intent_code": (68, "h"), "datatype": (70, "h"), "bitpix": (72, "h"),
    "pixdim0": (76, "f"), "pixdim1": (80, "f"), "pixdim3": (88, "f"), "vox_offset": (108, "f"),
    "scl_slope": (112, "f"), "scl_inter": (116, "f"), "dim_info": (39, "b"), "qform_code": (252, "h"),
    "sform_code": (254, "h"), "quatern_b": (256, "f"), "quatern_d": (264, "f"), "qoffset_x": (268, "f"),
    "qoffset_z": (276, "f"), "srow_x0": (280, "f"), "srow_y2": (304, "f"), "srow_z2": (320, "f"), "magic": (344, "i"),
}

#: Values NIfTI fields take besides :data:`EXTREMES`: every datatype and the intents ITK reads as vectors
#: (complex and RGB voxels with a vector intent corrupted ITK's memory), transform codes.
NIFTI_CODES = {
    "datatype": ["2", "4", "8", "16", "32", "64", "128", "256", "512", "768", "1024", "1280", "1536", "1792", "2048",
                 "2304"],
    "intent_code": ["1005", "1006", "1007", "2003", "2004"],
    "qform_code": ["2", "4"], "sform_code": ["2", "4"], "dim5": ["2", "3"],
}


def base_files(folder: Path) -> dict[str, bytes]:
    """Small valid files (name -> bytes) of every format and encoding the readers take."""
    volume = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 30).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    files = {}
    for name, compress in (("scan.nii", False), ("scan.nii.gz", True), ("raw.nrrd", False), ("gzip.nrrd", True),
                           ("raw.mha", False), ("zlib.mha", True)):
        sitk.WriteImage(image, str(folder / name), useCompression=compress)
        files[name] = (folder / name).read_bytes()
    files["detached.nhdr"] = files["raw.nrrd"].split(b"\n\n", 1)[0] + b"\ndata file: detached.raw\n\n"
    files["detached.raw"] = volume.astype("<i2").tobytes()
    return files


def _header_end(name: str, data: bytes) -> int:
    if name.endswith(".mha"):
        return data.find(b"ElementDataFile")
    if "nrrd" in name or name.endswith(".nhdr"):
        end = data.find(b"\n\n")
        return len(data) if end < 0 else end
    return 348


@st.composite
def mutated(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes, str]:
    """A base file's name, its mutated bytes and what was done to it."""
    name = draw(st.sampled_from([n for n in files if n != "detached.raw"]))
    data = files[name]
    nifti = name.startswith("scan.nii")
    if nifti and name.endswith(".gz"):
        data = gzip.decompress(data)
    end = _header_end(name, data)
    kind = draw(st.sampled_from(["field" if nifti else "number", "bytes", "line", "truncate", "extend"]))
    if kind == "field":
        field = draw(st.sampled_from(sorted(NIFTI_FIELDS)))
        offset, fmt = NIFTI_FIELDS[field]
        text = draw(st.sampled_from([v for v in EXTREMES + NIFTI_CODES.get(field, []) if _packs(fmt, v)]))
        data = data[:offset] + struct.pack("<" + fmt, _number(fmt, text)) + data[offset + struct.calcsize(fmt):]
        what = f"{field}={text}"
    elif kind == "number":
        header = data[:end].decode("latin-1")
        positions = [i for i, c in enumerate(header) if c.isdigit() and (i == 0 or not header[i - 1].isalnum())]
        start = draw(st.sampled_from(positions))
        stop = start
        while stop < len(header) and (header[stop].isdigit() or header[stop] in ".e-"):
            stop += 1
        text = draw(st.sampled_from(EXTREMES))
        data = (header[:start] + text + header[stop:]).encode("latin-1") + data[end:]
        what = f"{header[max(header.rfind(chr(10), 0, start), 0):start].strip()} {text}"
    elif kind == "bytes":
        count = draw(st.integers(1, 4))
        spots = draw(st.lists(st.integers(0, max(end - 1, 0)), min_size=count, max_size=count))
        values = draw(st.lists(st.integers(0, 255), min_size=count, max_size=count))
        buffer = bytearray(data)
        for spot, value in zip(spots, values):
            buffer[spot] = value
        data, what = bytes(buffer), f"bytes {spots}={values}"
    elif kind == "line":
        lines = data[:end].split(b"\n")
        index = draw(st.integers(0, len(lines) - 1))
        duplicate = draw(st.booleans())
        lines[index:index + 1] = [lines[index]] * 2 if duplicate else []
        data = b"\n".join(lines) + data[end:]
        what = f"line {index} {'doubled' if duplicate else 'removed'}"
    elif kind == "truncate":
        length = draw(st.integers(0, len(data) - 1))
        data, what = data[:length], f"truncated to {length} bytes"
    else:
        extra = draw(st.binary(min_size=1, max_size=64))
        data, what = data + extra, f"{len(extra)} bytes appended"
    if nifti and name.endswith(".gz"):
        data = gzip.compress(data)
    return name, data, what


def _number(fmt: str, text: str) -> float | int:
    return float(text) if fmt == "f" else int(float(text))


def _packs(fmt: str, text: str) -> bool:
    """Whether ``text`` is a value of the struct format ``fmt``."""
    try:
        struct.pack("<" + fmt, _number(fmt, text))
    except (ValueError, OverflowError, struct.error):
        return False
    return True


def peak_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM: ru_maxrss would count the parent's, from before exec)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def fuzz(examples: int, fuzz_seed: int, deadline_s: float, max_mib: float) -> Counter:
    """Read ``examples`` mutated files; returns the outcome counts, raises on the first failure."""
    with tempfile.TemporaryDirectory(prefix="napari-fewshot-fuzz-") as name:
        return _fuzz_in(Path(name), examples, fuzz_seed, deadline_s, max_mib)


def _fuzz_in(folder: Path, examples: int, fuzz_seed: int, deadline_s: float, max_mib: float) -> Counter:
    files = base_files(folder)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    outcomes: Counter = Counter()

    @seed(fuzz_seed)
    @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated(files), st.sampled_from(["auto", "image", "labels"]))
    def read_one(case: tuple[str, bytes, str], kind: str) -> None:
        name, data, what = case
        path = folder / f"case-{name}"
        path.write_bytes(data)
        print(f"reading {path.name} ({what}), kind={kind}", flush=True)
        started = time.perf_counter()
        try:
            read_volume(path, kind=kind)
            outcome = "read"
        except VolumeReadError:
            outcome = "refused"
        seconds = time.perf_counter() - started
        assert seconds < deadline_s, f"{name} ({what}) took {seconds:.1f} s"
        peak = peak_mib()
        assert peak < max_mib, f"{name} ({what}): peak memory {peak:.0f} MiB"
        outcomes[f"{name.split('.', 1)[1] if '.' in name else name} {outcome}"] += 1

    read_one()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--max-mib", type=float, default=1024.0, help="peak resident memory allowed (MiB)")
    args = parser.parse_args()
    started = time.perf_counter()
    outcomes = fuzz(args.examples, args.seed, args.deadline, args.max_mib)
    total = sum(outcomes.values())
    print(f"\n{total} mutated files in {time.perf_counter() - started:.0f} s, none crashed, hung or failed otherwise; "
          f"peak memory {peak_mib():.0f} MiB")
    for key, count in sorted(outcomes.items()):
        print(f"  {key}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
