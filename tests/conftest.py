"""Small volumes written by the tests themselves (SimpleITK directly, not the project's writer)."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import locale
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def _take_a_share_of_the_cpus() -> None:
    """Under pytest-xdist, pin this worker (and the commands it starts) to its own share of the CPUs.

    Before torch or OpenVINO are imported: each then sizes its threads to the share
    (:func:`~napari_fewshot.core.runtime.physical_cores` reads the affinity), so that
    workers do not each spread their threads over every CPU and fight for them.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) % count :: count] or cpus)


_take_a_share_of_the_cpus()
# torch._dynamo (which torchvision, and so every encoder, imports) loads Triton, which brings its own LLVM: loaded
# after Mesa's libLLVM (a viewer drawn under Xvfb) it crashes the process. The widget's runner keeps Triton out
# then (``_napari/runner.py``); a test worker may draw a viewer before any test imports an encoder, so Triton's
# LLVM is loaded first here, as in a test run in one process.
importlib.import_module("torch._dynamo")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per CPU, at most 4 (each holds a napari viewer and models: 1-3 GB)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4))


CLI = str(Path(sys.executable).parent / "napari-fewshot")
#: The benchmarks' own modules (``benchmarks/``, not in the package) are tested too: ``import budget``.
sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))
#: The tests' own cache folder (converted models, saved features), never the user's: kept between local runs.
TEST_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "napari-fewshot"
os.environ["NAPARI_FEWSHOT_CACHE"] = str(TEST_CACHE)  # subprocesses (the CLI) inherit it


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``napari-fewshot`` command; ``kwargs`` go to :func:`subprocess.run`."""
    return subprocess.run([CLI, *args], capture_output=True, text=True, encoding="utf-8", timeout=timeout, **kwargs)


def start_cli(*args: str, **kwargs) -> subprocess.Popen:
    """Start the real ``napari-fewshot`` command, to be signalled; ``kwargs`` go to :class:`subprocess.Popen`.

    Ctrl-C reaches it whatever the tests were started from: a shell starts a command put in the background with
    SIGINT ignored, which its children would inherit (and Python then never raises ``KeyboardInterrupt``).
    """
    return subprocess.Popen([CLI, *args], text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)


def rotation(axis: int, degrees: float) -> np.ndarray:
    """A 3x3 rotation about ITK axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


#: Direction matrices (ITK order) a scan may have: plain, RAS-stored (LPS flips),
#: one mirrored axis, oblique with a mirror, and a coronal acquisition (axes permuted).
DIRECTIONS = {
    "identity": np.eye(3),
    "ras-flip": np.diag([-1.0, -1.0, 1.0]),
    "mirror-z": np.diag([1.0, 1.0, -1.0]),
    "oblique": rotation(2, 17.0) @ rotation(0, -9.0) @ np.diag([-1.0, 1.0, 1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),
}
SPACING = (0.7, 1.3, 3.5)
ORIGIN = (-101.25, 37.5, -412.0)


def ramp(shape: tuple[int, int, int] = (6, 9, 11), dtype: str = "int16") -> np.ndarray:
    """A volume (z, y, x) whose every voxel differs, so any transposition or flip shows."""
    return (np.arange(np.prod(shape)).reshape(shape) - 200).astype(dtype)


def write_itk(path: Path, data: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=np.eye(3)) -> Path:
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    *,
    spacing=(0.8, 0.8, 2.5),
    origin=(-50.0, -60.0, 100.0),
    direction=np.eye(3),
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1",
    description: str = "test series",
    skip: tuple[int, ...] = (),
    reverse_names: bool = True,
    descending: bool = False,
) -> Path:
    """Write ``data`` (z, y, x) as a DICOM series, one file per slice.

    File names run against slice position when ``reverse_names`` (so a reader
    that orders by name gets it wrong); slices in ``skip`` are left out (a gap).
    ``descending``: instance numbers (and UIDs) run against the slice position,
    as a scanner stores a series acquired from the head down.
    """
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(data)
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    volume.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    d = volume.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = data.shape[0]
    with _locale_kept():  # ITK's DICOM writer leaves the process in the "C" locale (ASCII text I/O)
        for k in range(n):
            if k in skip:
                continue
            instance = n - k if descending else k + 1
            slice_image = volume[:, :, k]
            for tag, value in {
                "0008|0060": "CT",
                "0008|103e": description,
                "0020|000d": series_uid.rsplit(".", 1)[0] + ".9",
                "0020|000e": series_uid,
                "0020|0052": series_uid.rsplit(".", 1)[0] + ".7",
                "0020|0013": str(instance),
                "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0018|0050": f"{spacing[2]:.6f}",
                "0008|0018": f"{series_uid}.{instance}",
            }.items():
                slice_image.SetMetaData(tag, value)
            name = f"slice{(n - k if reverse_names else k):03d}.dcm"
            writer.SetFileName(str(folder / f"{series_uid.replace('.', '')[-6:]}_{name}"))
            writer.Execute(slice_image)
    return folder


@contextlib.contextmanager
def _locale_kept():
    """Restore the process's locale on leaving."""
    previous = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, previous)


@pytest.fixture
def ramp_volume() -> np.ndarray:
    return ramp()


def ellipsoids(shape: tuple[int, int, int] = (24, 48, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small MR-like volume (z, y, x) and its truth: a bright ellipsoid (label 1), a dark one (2).

    The background is striped and noisy; both structures span slices 4-20.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    bright = ((z - 12) / 9) ** 2 + ((y - 20) / 10) ** 2 + ((x - 26) / 12) ** 2 < 1
    dark = ((z - 12) / 8) ** 2 + ((y - 36) / 7) ** 2 + ((x - 12) / 7) ** 2 < 1
    image = 100 + 20 * np.sin(x / 2.0) + rng.normal(0, 8, shape)
    image[bright] = 300 + rng.normal(0, 8, bright.sum())
    image[dark] = -50 + rng.normal(0, 8, dark.sum())
    return image.astype(np.float32), (bright + 2 * dark).astype(np.uint8)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * np.logical_and(prediction, truth).sum() / (prediction.sum() + truth.sum()))


#: Bytes left free on the small disk.
FREE = 8192


class SmallDisk:
    """A folder where only about :data:`FREE` more bytes fit: a tmpfs, or (``mounted`` False) the shim."""

    def __init__(self, folder, mounted: bool) -> None:
        self.folder, self.mounted = folder, mounted

    def fill(self) -> None:
        """Leave :data:`FREE` bytes free (on the tmpfs; the shim limits each write instead)."""
        if self.mounted:
            stat = os.statvfs(self.folder)
            (self.folder / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - FREE))

    def _limit(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (FREE, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    @contextlib.contextmanager
    def full(self):
        """The disk full for writes made by this process inside the block."""
        self.fill()
        if self.mounted:
            yield
            return
        limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
        self._limit()
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)

    def run_full(self, *args: str) -> subprocess.CompletedProcess:
        """The CLI with the disk full."""
        self.fill()
        return cli(*args, preexec_fn=None if self.mounted else self._limit)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.name != "filler")


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True)
    try:
        yield SmallDisk(folder, mount.returncode == 0)
    finally:
        if mount.returncode == 0:
            subprocess.run(["umount", str(folder)], check=True)


def obey_permissions() -> None:
    """Run as root without the capabilities that override file permissions (CAP_DAC_OVERRIDE, _READ_SEARCH).

    Dropped from the bounding set before the command is executed, so the command
    holds neither and file modes apply to it as to any user.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def cli_obeying_permissions(*args: str) -> subprocess.CompletedProcess:
    """The CLI, as an ordinary user would run it, as far as file permissions go."""
    return cli(*args, preexec_fn=obey_permissions if os.geteuid() == 0 else None)
