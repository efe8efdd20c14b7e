"""LiteMedSAM's prompt encoder and mask decoder on cached image embeddings.

The engine caches LiteMedSAM's image embeddings (the ``litemedsam`` encoder's
trunk features, ``[N, 256, 64, 64]``), so a box prompt costs only the light
decoder.  Masks and boxes live on the slice grid; they are carried to and from
the encoder's 256x256 square with the engine's own padding
(:func:`~napari_fewshot.core.preprocess.to_encoder_slices`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .encoders.litemedsam import LiteMedSAMEncoder, load_lite_medsam
from .features import state_digest
from .preprocess import from_encoder_slices, to_encoder_slices
from .backends import decoder_runner, resolve_runtime
from .runtime import Runtime

SIZE = LiteMedSAMEncoder.input_size


def square_box(mask: np.ndarray, pixel_aspect: float = 1.0) -> np.ndarray | None:
    """The box ``[x0, y0, x1, y1]`` (pixels of the 256x256 encoder square) around a slice mask ``[H, W]``; None when empty."""
    square = to_encoder_slices(np.asarray(mask, np.float32)[None], SIZE, pixel_aspect)[0, 0] > 0.5
    rows, cols = np.flatnonzero(square.any(dim=1).numpy()), np.flatnonzero(square.any(dim=0).numpy())
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


class BoxPromptDecoder(nn.Module):
    """LiteMedSAM's prompt encoder and mask decoder as one module:
    ``(embeddings [N, 256, 64, 64], boxes [N, 1, 4]) -> logits [N, 1, 256, 256]`` on the encoder's square."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits


class BoxDecoder:
    """``decode(embeddings [N, 256, 64, 64], boxes [N, 4], shape, aspect) -> masks [N, H, W]`` with LiteMedSAM's decoder.

    ``runtime``: where it runs (OpenVINO or torch; always at float32), default torch on the CPU.
    """

    def __init__(self, runtime: Runtime | None = None) -> None:
        runtime = runtime or resolve_runtime("torch", "f32", "cpu")
        model = load_lite_medsam()
        module = BoxPromptDecoder(model.prompt_encoder, model.mask_decoder).eval()
        digest = state_digest(module.state_dict().items(), "litemedsam-box-decoder")
        self._logits = decoder_runner(module, digest, runtime, "LiteMedSAM's decoder")
        self.device = runtime.device

    @torch.inference_mode()
    def decode(
        self, embeddings: torch.Tensor, boxes: np.ndarray, shape: tuple[int, int], pixel_aspect: float = 1.0
    ) -> np.ndarray:
        """The masks (bool ``[N, H, W]`` on the slice grid ``shape``) that ``boxes`` ``[N, 4]`` prompt, one per embedding.

        Slices decoded together share the decoder's passes (several times faster per slice on a CPU than one by one).
        """
        boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32, device=self.device).reshape(-1, 1, 4)
        logits = self._logits(embeddings, boxes)
        return (from_encoder_slices(logits.cpu(), shape, pixel_aspect)[:, 0] > 0).numpy()

