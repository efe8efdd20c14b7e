"""The torch backend: eager torch on the CPU, CUDA or MPS (training always uses it; the fallback of every other)."""

from __future__ import annotations

import torch
from torch import nn

from .cancel import CancelCheck, cancellable
from .runtime import Decoder, Runtime

_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


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


class TorchBackend:
    """Eager torch: float32 on the CPU (bfloat16 asked), float16 autocast on CUDA, float32 on MPS by default."""

    name = label = "torch"
    precisions = {"cpu": ("f32", "bf16"), "cuda": ("f16", "f32", "bf16"), "mps": ("f32", "f16")}

    def trunk(self, encoder: nn.Module, runtime: Runtime) -> TorchTrunk:
        return TorchTrunk(encoder, runtime)

    def decoder(self, module: nn.Module, digest: str, runtime: Runtime) -> Decoder:
        module = module.to(runtime.device)
        return lambda embeddings, boxes: module(embeddings.to(runtime.device, torch.float32), boxes)
