"""DICOM in, DICOM out on a real CT: the SEG's frames reference the series, and read back as the NIfTI export.

abdomen-ct (``../shared/data``) is written as a DICOM series (one file per
slice, instance numbers from the head down as scanners store them, fresh UIDs);
the liver and the spleen are painted on their slices of largest area, and
``napari-fewshot segment`` runs on the DICOM folder twice, with ``--output
mask.dcm`` and with ``--output mask.nii.gz``.  Then, with pydicom, every frame of
the SEG is checked to reference an instance of the series and to sit at that
instance's position; and the SEG read back onto the series (the plugin's
reader) is compared with the NIfTI export: Dice per structure and voxels that
differ.

    .venv/bin/python benchmarks/dicom_seg_roundtrip.py [--data DIR] [--encoder tiny]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from napari_fewshot.io import read_volume
from napari_fewshot.io.dicom_seg import read_seg

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "abdomen-ct"
#: Label values of abdomen-ct's label map painted as structures 1 and 2, with their names.
STRUCTURES = {5: "liver", 1: "spleen"}
CLI = str(Path(sys.executable).parent / "napari-fewshot")


def write_series(image: sitk.Image, folder: Path) -> None:
    """Write a 3D CT as a DICOM series: CT Image Storage, one file per slice, instance 1 at the head."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetSize()[2]
    for k in range(n):
        instance = n - k  # the last slice (the highest, head end) first
        slice_image = image[:, :, k]
        for tag, value in {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": generate_uid(),
            "0008|0060": "CT",
            "0008|103e": "abdomen CT",
            "0010|0010": "Anonymous",
            "0010|0020": "abdomen-ct",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0011": "1",
            "0020|0052": frame,
            "0020|0013": str(instance),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{instance:04d}.dcm"))
        writer.Execute(slice_image)


def painted(labels: np.ndarray) -> np.ndarray:
    """Each structure of :data:`STRUCTURES` painted on its slice of largest area, as values 1, 2, ..."""
    support = np.zeros(labels.shape, np.uint8)
    for value, (label, _) in enumerate(STRUCTURES.items(), 1):
        organ = labels == label
        z = int(np.argmax(organ.sum(axis=(1, 2))))
        support[z][organ[z]] = value
    return support


def segment(folder: Path, support: Path, output: Path, encoder: str | None) -> float:
    """Run ``napari-fewshot segment`` on the DICOM folder; returns its seconds."""
    command = [CLI, "segment", "--image", str(folder), "--support-labels", str(support), "--output", str(output),
               "--names", ", ".join(STRUCTURES.values()), *(["--encoder", encoder] if encoder else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    print(f"$ napari-fewshot segment ... --output {output.name}\n  {result.stdout.strip()}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a folder with image.nii.gz and label.nii.gz")
    parser.add_argument("--encoder", help="the encoder of the segment runs (default: the command's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        write_series(sitk.ReadImage(str(args.data / "image.nii.gz")), work / "ct")
        scan = read_volume(work / "ct")
        truth = read_volume(args.data / "label.nii.gz", kind="labels")
        assert truth.geometry.same_grid(scan.geometry), "the series does not lie on the NIfTI's grid"
        sitk_support = sitk.GetImageFromArray(painted(truth.data))
        sitk_support.CopyInformation(sitk.ReadImage(str(args.data / "label.nii.gz")))
        sitk.WriteImage(sitk_support, str(work / "support.nii.gz"))
        print(f"series: {len(scan.dicom.files)} slices of {scan.data.shape[1]} x {scan.data.shape[2]}, "
              f"spacing {scan.geometry.spacing} mm, instances from the head down")

        seconds = {name: segment(work / "ct", work / "support.nii.gz", work / name, args.encoder)
                   for name in ("mask.dcm", "mask.nii.gz")}

        seg = pydicom.dcmread(work / "mask.dcm")
        sources = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in scan.dicom.files)}
        frames = seg.PerFrameFunctionalGroupsSequence
        referenced = on_source = 0
        for group in frames:
            uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            if uid in sources:
                referenced += 1
                on_source += group.PlanePositionSequence[0].ImagePositionPatient == sources[uid].ImagePositionPatient
        first = next(iter(sources.values()))
        print(f"SEG: {len(frames)} frames (empty ones omitted), {len(seg.SegmentSequence)} segments "
              f"({', '.join(f'{s.SegmentLabel}: {s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning}' for s in seg.SegmentSequence)}), "
              f"{(work / 'mask.dcm').stat().st_size / 1e3:.0f} kB")
        print(f"frames referencing an instance of the series: {referenced}/{len(frames)}; "
              f"at that instance's position: {on_source}/{len(frames)}; "
              f"same study: {seg.StudyInstanceUID == first.StudyInstanceUID}, "
              f"same frame of reference: {seg.FrameOfReferenceUID == first.FrameOfReferenceUID}")

        back, names = read_seg(work / "mask.dcm", scan.geometry, scan.dicom)
        nifti = read_volume(work / "mask.nii.gz", kind="labels")
        for value, name in names.items():
            a, b = back.data == value, nifti.data == value
            dice = 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)
            print(f"{name}: {np.count_nonzero(a)} voxels in the SEG, {np.count_nonzero(b)} in the NIfTI export, "
                  f"Dice {dice:.4f}")
        print(f"voxels that differ between the SEG read back and the NIfTI export: "
              f"{np.count_nonzero(back.data != nifti.data)} of {back.data.size}")
        print(f"segment runs: {seconds['mask.dcm']:.1f} s (to .dcm), {seconds['mask.nii.gz']:.1f} s (to .nii.gz)")


if __name__ == "__main__":
    main()
