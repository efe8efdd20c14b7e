"""Walk through the widget's workflow on the packaged sample CT, time each step, save screenshots.

Drives the real widget in a real napari window (run it under a display, e.g.
``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/widget_screenshots.py``).
Prints one line per step with its wall time and writes ``docs/images/widget-*.png``.
The correction step stands in for a clinician: on the least sure slice it paints
the liver of ``../shared/data/abdomen-ct`` (the scan the sample was cropped from)
into the prediction, adds the slice to the support and segments again; whole-crop
liver Dice before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_fewshot._napari.widget import FewShotWidget
from napari_fewshot.io import Geometry, read_volume
from napari_fewshot.io.orientation import closest_canonical, to_view

LIVER = 5  # in ../shared/data/abdomen-ct/labels.json

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def wait(widget: FewShotWidget) -> None:
    while widget._runner.busy:
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def shot(viewer: napari.Viewer, name: str) -> None:
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(IMAGES / f"widget-{name}.png"), canvas_only=False, flash=False)


def sample_truth(path: Path, image) -> np.ndarray:
    """The liver of the full scan at ``path``, cut to the slices of the sample ``image`` layer."""
    full = read_volume(path, kind="labels")
    sample = Geometry.from_dict(image.metadata["geometry"])
    starts = full.geometry.index_to_physical(np.stack([np.arange(full.data.shape[0]), *np.zeros((2, full.data.shape[0]), int)], 1))
    first = int(np.argmin(np.linalg.norm(starts - np.asarray(sample.origin), axis=1)))
    crop = full.data[first : first + sample.shape[0]] == LIVER  # the file's layout, as the sample was cut
    return to_view(crop, closest_canonical(sample))  # the layer's layout


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="litemedsam")
    parser.add_argument("--truth", type=Path, default=Path("../shared/data/abdomen-ct/label.nii.gz"))
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-fewshot", "abdomen_ct")
    image, support = viewer.layers["abdomen CT"], viewer.layers["liver support"]
    _, widget = viewer.window.add_plugin_dock_widget("napari-fewshot", "Few-shot segmentation")
    widget.support.value, widget.names.value, widget.encoder.value = support, "liver", args.encoder
    truth = sample_truth(args.truth, image)
    painted = int(np.flatnonzero(support.data.any(axis=(1, 2)))[0])
    viewer.dims.set_current_step(0, painted)
    shot(viewer, "1-painted")
    steps = []

    def timed(label: str, action) -> None:
        started = time.perf_counter()
        action()
        wait(widget)
        steps.append((label, time.perf_counter() - started))
        print(f"{label}: {steps[-1][1]:.1f} s  ({widget.status.value})", flush=True)

    viewer.dims.set_current_step(0, painted - 8)
    timed("Segment slice (first preview: encodes 2 slices)", widget.segmenting.slice_button.native.click)
    shot(viewer, "2-slice")
    timed("Segment volume (first run: encodes the other slices)", widget.segmenting.volume_button.native.click)
    viewer.layers["abdomen CT liver attention"].visible = True
    shot(viewer, "3-volume")
    viewer.layers["abdomen CT liver attention"].visible = False
    prediction = viewer.layers["abdomen CT prediction"]
    print(f"liver Dice, whole crop: {dice(prediction.data == 1, truth):.3f}")
    worst = list(widget.correcting.check.choices)[0]
    widget.correcting.check.value = [worst]
    fix = np.zeros(truth.shape, bool)
    fix[worst] = True
    prediction.data_setitem(np.nonzero(fix), truth[fix].astype(prediction.data.dtype))
    timed(f"Add slice {worst} (corrected) to support", widget.correcting.add.native.click)
    timed("Segment volume again (cached features)", widget.segmenting.volume_button.native.click)
    print(f"liver Dice, whole crop, after the correction: {dice(prediction.data == 1, truth):.3f}")
    shot(viewer, "4-corrected")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "liver.nii.gz")
        timed("Export mask (NIfTI + sidecar)", lambda: widget.exporting.export_mask(path))
    print("\n| step | seconds |\n| --- | --- |")
    for label, seconds in steps:
        print(f"| {label} | {seconds:.1f} |")
    viewer.close()


if __name__ == "__main__":
    main()
