"""What runs a model: a :class:`Runtime` (backend, precision, device, threads) and the :class:`Backend` protocol.

A backend offers precisions per device type and runs the engine's two models: an
encoder's trunk (:class:`Trunk`) and LiteMedSAM's box decoder.  The backends
(torch in :mod:`~napari_fewshot.core.torch_backend`, OpenVINO in
:mod:`~napari_fewshot.core.openvino_backend`) are registered, and a runtime is
chosen, in :mod:`~napari_fewshot.core.backends`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .cancel import CancelCheck

#: A decoder on a backend: ``logits(embeddings [N, 256, 64, 64], boxes [N, 1, 4]) -> [N, 1, 256, 256]``.
Decoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Runtime:
    """A backend (``torch`` or ``openvino``), a precision (``f32``, ``bf16``, ``f16``, ``int8``), a device and CPU
    threads."""

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


#: Per precision, the CPU flags (any one of them) that run it natively; a precision not named needs none.
NATIVE_FLAGS: dict[str, frozenset[str]] = {"bf16": frozenset({"avx512_bf16", "amx_bf16"})}
#: numpy's names of the CPU features Linux would list in ``/proc/cpuinfo``, where there is none.
_NUMPY_FLAGS = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512BF16": "avx512_bf16", "AVX512VNNI": "avx512_vnni"}


def runs_natively(precision: str, flags: Collection[str]) -> bool:
    """Whether a CPU with ``flags`` (Linux's names, :func:`cpu_flags`) has instructions for ``precision``."""
    needs = NATIVE_FLAGS.get(precision)
    return needs is None or not needs.isdisjoint(flags)


def cpu_flags() -> frozenset[str]:
    """This CPU's instruction-set flags as Linux names them (``avx2``, ``avx512_bf16``, ``amx_bf16`` ...).

    Read from ``/proc/cpuinfo``; where there is none (macOS, Windows), numpy's view of
    the CPU gives the AVX family (:data:`_NUMPY_FLAGS`).
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return frozenset(name for key, name in _NUMPY_FLAGS.items() if features.get(key))


def physical_cores() -> int:
    """The physical CPU cores this process may run on (hyper-threads not counted)."""
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, allowed))


class Trunk(Protocol):
    """An encoder's trunk on a runtime: ``trunk(slices [N, 3, S, S] in [0, 1], cancel) -> [N, C, h, w]`` float32."""

    runtime: Runtime
    input_size: int

    def __call__(self, slices: torch.Tensor, cancel: CancelCheck | None = None) -> torch.Tensor: ...

    def batch_size(self) -> int:
        """Slices per call that keep the runtime busy without exhausting its memory."""
        ...


class Backend(Protocol):
    """What runs the engine's models.

    name : how a runtime names it; label : how a message names it.  precisions : per
    device type (``cpu``, ``cuda``, ``mps``), the precisions it offers, the one ``auto`` takes first.
    """

    name: str
    label: str
    precisions: dict[str, tuple[str, ...]]

    def trunk(self, encoder: nn.Module, runtime: Runtime) -> Trunk:
        """``encoder``'s trunk on ``runtime``."""
        ...

    def decoder(self, module: nn.Module, digest: str, runtime: Runtime) -> Decoder:
        """A box-prompted decoder ``module`` (its weights' ``digest``) on ``runtime``."""
        ...
