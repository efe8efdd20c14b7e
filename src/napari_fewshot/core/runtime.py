"""Where the encoder and LiteMedSAM's box decoder run: the backend, the precision, the threads.

A :class:`Runtime` is chosen once per device by :func:`resolve_runtime`:

- on the CPU, OpenVINO (the encoder converted once per weights file and cached on
  disk, :mod:`~napari_fewshot.core.openvino_backend`), in bfloat16 where the CPU has it;
- on CUDA and MPS, torch, with the encoder in float16 autocast on CUDA.

``backend='torch'`` keeps eager torch everywhere (training always uses it).  When
the OpenVINO package is missing or a conversion fails, the run falls back to torch
with one warning line (:func:`on_runtime`), never an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import torch

from .cancel import CancelCheck, cancellable
from .device import resolve_device
from .errors import SegmentationError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "f32", "bf16", "f16")
#: The precision ``auto`` takes per backend and device type.  OpenVINO on the CPU: bfloat16, which
#: cost under 0.001 mean Dice on the development benchmark against float32 (docs/benchmarks.md,
#: issue 17), at float32 on a CPU without bfloat16 instructions; torch on the CPU: float32.
AUTO_PRECISION = {
    ("openvino", "cpu"): "bf16", ("torch", "cpu"): "f32", ("torch", "cuda"): "f16", ("torch", "mps"): "f32",
}
#: Precisions each backend offers per device type (OpenVINO's bf16 falls back to f32 on a CPU without it).
SUPPORTED = {
    ("torch", "cpu"): ("f32", "bf16"),
    ("torch", "cuda"): ("f32", "f16", "bf16"),
    ("torch", "mps"): ("f32", "f16"),
    ("openvino", "cpu"): ("f32", "bf16"),
}
_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """A backend (``torch`` or ``openvino``), a precision (``f32``, ``bf16``, ``f16``), a device and CPU threads."""

    backend: str
    precision: str
    device: torch.device
    threads: int

    def __str__(self) -> str:
        threads = f", {self.threads} threads" if self.device.type == "cpu" else ""
        return f"{self.backend} {self.precision} on {self.device}{threads}"

    @property
    def feature_tag(self) -> str:
        """What a feature cache key adds for features this runtime makes: nothing at float32 (every backend
        gives float32 features within rounding of the cache's bfloat16), else the precision."""
        return "" if self.precision == "f32" else f":{self.precision}"

    def exact(self) -> Runtime:
        """The same backend and device at float32."""
        return replace(self, precision="f32")


def physical_cores() -> int:
    """The physical CPU cores this process may run on (hyper-threads not counted)."""
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


def resolve_runtime(
    backend: str = "auto", precision: str = "auto", device: str | torch.device = "auto"
) -> Runtime:
    """The runtime ``backend`` and ``precision`` name on ``device`` (see the module), or a clear error.

    ``auto`` backend: OpenVINO on the CPU, torch on a GPU.  ``auto`` precision:
    :data:`AUTO_PRECISION`.  The decoder always runs at float32.  OpenVINO runs on the CPU only: with ``device='auto'``
    it takes the CPU; with a GPU named it is refused.
    """
    if backend not in BACKENDS:
        raise SegmentationError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SegmentationError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    torch_device = resolve_device("cpu" if backend == "openvino" and str(device) == "auto" else device)
    kind = torch_device.type
    if backend == "auto":
        backend = "openvino" if kind == "cpu" else "torch"
    if (backend, kind) not in SUPPORTED:
        raise SegmentationError(f"the {backend} backend runs on the CPU only; use device='cpu' or backend='torch'")
    precision = AUTO_PRECISION[backend, kind] if precision == "auto" else precision
    if precision not in SUPPORTED[backend, kind]:
        choices = ", ".join(SUPPORTED[backend, kind])
        raise SegmentationError(f"precision {precision} is not offered by {backend} on {kind}; choose one of {choices}")
    return Runtime(backend, precision, torch_device, physical_cores())


class Trunk(Protocol):
    """An encoder's trunk on a runtime: ``trunk(slices [N, 3, S, S] in [0, 1], cancel) -> [N, C, h, w]`` float32."""

    runtime: Runtime
    input_size: int

    def __call__(self, slices: torch.Tensor, cancel: CancelCheck | None = None) -> torch.Tensor: ...

    def batch_size(self) -> int:
        """Slices per call that keep the runtime busy without exhausting its memory."""
        ...


class TorchTrunk:
    """``trunk(slices [N, 3, S, S] in [0, 1], cancel) -> features [N, C, h, w]`` float32, eager torch.

    At ``f16``/``bf16`` the trunk runs under autocast.  ``cancel`` is asked before
    every submodule runs (:func:`~napari_fewshot.core.cancel.cancellable`).
    """

    def __init__(self, encoder: torch.nn.Module, runtime: Runtime) -> None:
        self.encoder, self.runtime = encoder, runtime
        self.input_size: int = encoder.input_size
        self._batch: int | None = None

    def __call__(self, slices: torch.Tensor, cancel: CancelCheck | None = None) -> torch.Tensor:
        device = self.runtime.device
        dtype = _DTYPES.get(self.runtime.precision)
        with torch.inference_mode(), cancellable(self.encoder, cancel), torch.autocast(
            device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            return self.encoder.trunk(slices.to(device)).float()

    def batch_size(self) -> int:
        """Slices per batch: 4 on the CPU, 8 on MPS; on CUDA as many as half the free memory holds
        (measured on one slice, the first time), at most 256."""
        device = self.runtime.device
        if device.type != "cuda":
            return 8 if device.type == "mps" else 4
        if self._batch is None:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            self(torch.zeros(1, 3, self.input_size, self.input_size))
            per_slice = max(torch.cuda.max_memory_allocated(device) - before, 1)
            free, _ = torch.cuda.mem_get_info(device)
            self._batch = max(1, min(256, int(0.5 * free / per_slice)))
        return self._batch


def trunk_runner(encoder: torch.nn.Module, runtime: Runtime) -> Trunk:
    """The encoder's trunk on ``runtime``: OpenVINO's converted model, or torch (also when OpenVINO fails).

    Its ``runtime`` is the one that actually runs (torch after a fallback).
    """

    def openvino():
        from .openvino_backend import OpenVINOTrunk

        return OpenVINOTrunk(encoder, runtime)

    return on_runtime(runtime, openvino, lambda torch_runtime: TorchTrunk(encoder, torch_runtime), f"the {encoder.name} encoder")


T = TypeVar("T")


def on_runtime(runtime: Runtime, openvino: Callable[[], T], torch_: Callable[[Runtime], T], what: str) -> T:
    """``openvino()`` when ``runtime`` is OpenVINO's, else ``torch_(runtime)``.

    When OpenVINO fails (its package missing, a conversion or compilation failing),
    one warning line says why and ``torch_`` gets torch at float32 on the same device.
    """
    if runtime.backend != "openvino":
        return torch_(runtime)
    try:
        return openvino()
    except Exception as error:  # whatever broke inside the runtime, torch does the work
        fallback = Runtime("torch", "f32", runtime.device, runtime.threads)
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]
        log.warning("OpenVINO is not usable for %s (%s); running %s instead", what, reason, fallback)
        return torch_(fallback)
