"""Choosing where the encoder runs: backend, precision, threads; torch when OpenVINO cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_fewshot.core.encoders import build_encoder
from napari_fewshot.core.errors import SegmentationError
from napari_fewshot.core.backends import resolve_runtime, trunk_runner
from napari_fewshot.core.runtime import Runtime, cpu_flags, physical_cores, runs_natively
from napari_fewshot.core.torch_backend import TorchTrunk

from conftest import write_itk


def test_auto_is_openvino_in_bfloat16_on_a_cpu_with_bfloat16_instructions():
    runtime = resolve_runtime(device="cpu", flags={"avx2", "avx512f", "avx512_bf16"})
    assert (runtime.backend, runtime.precision, runtime.device.type) == ("openvino", "bf16", "cpu")
    assert runtime.feature_tag == ":bf16"  # features of another precision are cached apart
    assert resolve_runtime("openvino", "int8", "cpu").feature_tag == ":int8"
    assert resolve_runtime("openvino", "f32", "cpu").feature_tag == ""  # float32 features share the cache with torch's
    assert resolve_runtime("torch", "auto", "cpu") == Runtime("torch", "f32", torch.device("cpu"), physical_cores())
    # OpenVINO asked for with device auto takes the CPU, whatever GPU there is
    assert resolve_runtime("openvino", "auto", "auto").device.type == "cpu"


@pytest.mark.parametrize("flags, auto", [
    ({"avx2", "fma"}, "f32"),  # AVX2 only: no bfloat16, and int8 only when asked
    ({"avx2", "avx512f", "avx512_vnni"}, "f32"),
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "bf16"),
    ({"avx2", "amx_tile", "amx_bf16", "amx_int8"}, "bf16"),
    (set(), "f32"),  # a CPU that says nothing (an ARM Mac)
])
def test_the_cpus_flags_choose_the_precision(flags, auto):
    assert resolve_runtime("auto", "auto", "cpu", flags=flags).precision == auto
    assert resolve_runtime("openvino", "int8", "cpu", flags=flags).precision == "int8"  # asked for: taken
    assert resolve_runtime("torch", "auto", "cpu", flags=flags).precision == "f32"


def test_this_cpus_flags_are_read():
    flags = cpu_flags()
    assert flags and all(flag == flag.lower() and " " not in flag for flag in flags)
    assert resolve_runtime(device="cpu").precision == ("bf16" if runs_natively("bf16", flags) else "f32")


def test_bad_choices_name_the_good_ones():
    with pytest.raises(SegmentationError, match="unknown backend 'tensorrt'; choose one of auto, torch, openvino"):
        resolve_runtime("tensorrt")
    with pytest.raises(SegmentationError, match="unknown precision 'int4'"):
        resolve_runtime("torch", "int4")
    with pytest.raises(SegmentationError, match="f16 is not offered by openvino on cpu; choose one of f32, bf16, int8"):
        resolve_runtime("openvino", "f16", "cpu")
    with pytest.raises(SegmentationError, match="int8 is not offered by torch on cpu; choose one of f32, bf16$"):
        resolve_runtime("torch", "int8", "cpu")


def test_threads_are_the_physical_cores_this_process_may_use():
    threads = physical_cores()
    assert 1 <= threads <= len(os.sched_getaffinity(0))
    assert resolve_runtime(device="cpu").threads == threads


def test_torch_trunk_is_the_encoders_trunk_and_asks_cancel_inside():
    encoder = build_encoder("tiny")
    trunk = trunk_runner(encoder, resolve_runtime("torch", "f32", "cpu"))
    assert isinstance(trunk, TorchTrunk) and trunk.batch_size() == 4
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x), encoder.trunk(x))
    asked = []
    with pytest.raises(Exception, match="cancelled"):
        trunk(x, lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3  # asked per submodule, not once per call


def test_a_missing_openvino_falls_back_to_torch_with_one_line(tmp_path):
    """The CLI in a process where ``import openvino`` fails, as on a machine without the package."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 24, 24)).astype(np.float32)
    image[:, 6:16, 6:16] += 4
    support = np.zeros(image.shape, np.uint8)
    support[3, 6:16, 6:16] = 1
    write_itk(tmp_path / "image.nii.gz", image)
    write_itk(tmp_path / "support_labels.nii.gz", support)
    code = (
        "import sys; sys.modules['openvino'] = None; from napari_fewshot.cli import main; "
        f"sys.exit(main(['segment', '--image', {str(tmp_path / 'image.nii.gz')!r}, '--support-labels', "
        f"{str(tmp_path / 'support_labels.nii.gz')!r}, '--output', {str(tmp_path / 'out.nii.gz')!r}, "
        "'--encoder', 'tiny', '--device', 'cpu', '--backend', 'openvino']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "encoder on torch f32 on cpu" in done.stdout
    notices = [line for line in done.stderr.splitlines() if "OpenVINO is not usable" in line]
    assert len(notices) == 1 and "running torch f32 on cpu" in notices[0]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "out.nii.gz").is_file()
