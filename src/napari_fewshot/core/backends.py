"""The backends that run the engine's models, and how a runtime is chosen among them.

:data:`BACKENDS` holds every registered :class:`~napari_fewshot.core.runtime.Backend`
(torch and OpenVINO; :func:`register_backend` adds another runtime or precision);
:func:`resolve_runtime` picks one per device: ``auto`` takes the first registered
backend, in :data:`PREFERENCE` order, that runs on the device (OpenVINO on the CPU,
converted once per weights file and cached on disk; torch on CUDA and MPS) and its
first precision there that the CPU runs natively, a pure function of the CPU's flags
(bfloat16 with OpenVINO where the CPU has bfloat16 instructions, else float32;
float16 autocast on CUDA).  ``int8`` (OpenVINO, quantized once per weights file with
NNCF) is taken only when asked for.  When a backend other than torch fails (its package
missing, a conversion failing), the model runs on torch at float32 with one warning
line (:func:`on_backend`), never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TypeVar

import torch
from torch import nn

from .device import resolve_device
from .errors import SegmentationError
from .openvino_backend import OpenVINOBackend
from .runtime import Backend, Decoder, Runtime, Trunk, cpu_flags, physical_cores, runs_natively
from .torch_backend import TorchBackend

log = logging.getLogger(__name__)

#: Every registered backend by name.
BACKENDS: dict[str, Backend] = {}
#: ``auto`` takes the first of these that runs on the device.
PREFERENCE: list[str] = []
PRECISIONS = ("auto", "f32", "bf16", "f16", "int8")


def register_backend(backend: Backend, preferred: bool = False) -> None:
    """Make ``backend`` one a runtime may name (and, when ``preferred``, the one ``auto`` takes where it runs)."""
    BACKENDS[backend.name] = backend
    if backend.name not in PREFERENCE:
        PREFERENCE.insert(0 if preferred else len(PREFERENCE), backend.name)


register_backend(TorchBackend())
register_backend(OpenVINOBackend(), preferred=True)


def resolve_runtime(
    backend: str = "auto", precision: str = "auto", device: str | torch.device = "auto",
    flags: Collection[str] | None = None,
) -> Runtime:
    """The runtime ``backend`` and ``precision`` name on ``device`` (see the module), or a clear error.

    The decoder always runs at float32.  A backend that runs on the CPU only takes the
    CPU with ``device='auto'``; with a GPU named it is refused.  ``flags``: the CPU's
    (Linux's names; default :func:`~napari_fewshot.core.runtime.cpu_flags`), which
    ``precision='auto'`` chooses by on the CPU.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise SegmentationError(f"unknown backend '{backend}'; choose one of auto, {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SegmentationError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    cpu_only = backend != "auto" and set(BACKENDS[backend].precisions) == {"cpu"}
    torch_device = resolve_device("cpu" if cpu_only and str(device) == "auto" else device)
    kind = torch_device.type
    if backend == "auto":
        backend = next(name for name in PREFERENCE if kind in BACKENDS[name].precisions)
    offered = BACKENDS[backend].precisions.get(kind)
    if offered is None:
        raise SegmentationError(f"the {backend} backend runs on the CPU only; use device='cpu' or backend='torch'")
    if precision == "auto":
        flags = cpu_flags() if flags is None and kind == "cpu" else flags
        precision = next((p for p in offered if kind != "cpu" or runs_natively(p, flags)), offered[0])
    if precision not in offered:
        choices = ", ".join(sorted(offered, key=PRECISIONS.index))
        raise SegmentationError(f"precision {precision} is not offered by {backend} on {kind}; choose one of {choices}")
    return Runtime(backend, precision, torch_device, physical_cores())


T = TypeVar("T")


def on_backend(runtime: Runtime, make: Callable[[Backend, Runtime], T], what: str) -> T:
    """``make(backend, runtime)`` with ``runtime``'s backend.

    When a backend other than torch fails (its package missing, a conversion or
    compilation failing), one warning line says why and ``make`` gets torch at
    float32 on the same device.
    """
    if runtime.backend == "torch":
        return make(BACKENDS["torch"], runtime)
    try:
        return make(BACKENDS[runtime.backend], runtime)
    except Exception as error:  # whatever broke inside the runtime, torch does the work
        fallback = Runtime("torch", "f32", runtime.device, runtime.threads)
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]
        log.warning("%s is not usable for %s (%s); running %s instead", BACKENDS[runtime.backend].label, what, reason,
                    fallback)
        return make(BACKENDS["torch"], fallback)


def trunk_runner(encoder: nn.Module, runtime: Runtime) -> Trunk:
    """The encoder's trunk on ``runtime`` (on torch after a fallback: its ``runtime`` is the one that runs)."""
    return on_backend(runtime, lambda backend, actual: backend.trunk(encoder, actual), f"the {encoder.name} encoder")


def decoder_runner(module: nn.Module, digest: str, runtime: Runtime, what: str) -> Decoder:
    """The box-prompted decoder ``module`` (its weights' ``digest``) on ``runtime`` at float32."""
    return on_backend(runtime.exact(), lambda backend, actual: backend.decoder(module, digest, actual), what)

