"""How responsive napari stays while the widget segments a volume, per backend.

Opens the packaged sample CT in a real napari window with the widget, and for
each backend asked for presses "Segment volume" with no features cached while a
10 ms timer on the GUI thread notes when it fires.  A gap between two firings is
time the GUI thread could not draw or take input; printed: the run's seconds and
the gaps' median, 99th percentile and maximum, with the machine's load.
Run it under a display:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/gui_gaps.py [--backends torch openvino]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

TICK_MS = 10


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(viewer: napari.Viewer, widget, backend: str) -> dict:
    from napari_fewshot.core.features import DEFAULT_CACHE

    DEFAULT_CACHE.clear()
    DEFAULT_CACHE.folder = None  # nothing read from the disk cache: every run encodes
    widget.backend.value = backend
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    started = time.perf_counter()
    widget.segmenting.run("volume")
    while widget._runner.busy:
        QApplication.processEvents()
        time.sleep(0.001)
    seconds = time.perf_counter() - started
    timer.stop()
    gaps = np.diff(ticks) * 1000 - TICK_MS
    worst = int(np.argmax(gaps))
    return {"backend": backend, "seconds": seconds, "status": widget.status.value,
            "median_ms": float(np.median(gaps)), "p99_ms": float(np.percentile(gaps, 99)), "max_ms": float(gaps[worst]),
            "max_at_s": ticks[worst] - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino"])
    args = parser.parse_args()
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-fewshot", "abdomen_ct")
    _, widget = viewer.window.add_plugin_dock_widget("napari-fewshot", "Few-shot segmentation")
    widget.support.value = viewer.layers["liver support"]
    for _ in range(10):
        QApplication.processEvents()
    print(f"load before: {load()}")
    print("| backend | run s | gap median ms | gap p99 ms | gap max ms (at s) |")
    print("|---|---|---|---|---|")
    for backend in args.backends:
        row = measure(viewer, widget, backend)
        print(f"| {backend} | {row['seconds']:.1f} | {row['median_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} ({row['max_at_s']:.1f}) |")
        print(f"  ({row['status']})", flush=True)
    print(f"load after: {load()}")
    viewer.close()


if __name__ == "__main__":
    main()
