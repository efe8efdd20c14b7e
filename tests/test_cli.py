import subprocess
import sys
from pathlib import Path

import numpy as np

import napari_fewshot
from conftest import write_itk

CLI = str(Path(sys.executable).parent / "napari-fewshot")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, encoding="utf-8")


def test_version_and_help():
    assert run("--version").stdout.strip() == f"napari-fewshot {napari_fewshot.__version__}"
    result = run("--help")
    assert result.returncode == 0 and "info" in result.stdout


def test_info_prints_geometry_and_reports_bad_files(tmp_path):
    path = write_itk(tmp_path / "ct.nrrd", np.full((3, 4, 5), -1000, np.int16), spacing=(0.5, 0.75, 2.0))
    result = run("info", str(path), str(tmp_path / "missing.nii"))
    assert result.returncode == 1
    assert "image (CT)" in result.stdout and "(0.5, 0.75, 2.0)" in result.stdout
    assert "shape (z, y, x): (3, 4, 5)" in result.stdout
    assert "missing.nii: no such file" in result.stderr
