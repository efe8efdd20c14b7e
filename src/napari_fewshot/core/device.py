"""Choosing the torch device: ``auto`` takes CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from .errors import SegmentationError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` names (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked to exist here."""
    if isinstance(name, torch.device):
        name = str(name)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise SegmentationError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[kind]:
        raise SegmentationError(f"device '{name}' is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def available_devices() -> list[str]:
    """The device names :func:`resolve_device` accepts on this machine: ``auto``, ``cpu``, then any GPU."""
    gpus = [kind for kind, present in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())) if present]
    return ["auto", "cpu", *gpus]


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device running out of memory (CUDA's error, or MPS's RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )
