"""Baseline DeepLabV3+: ResNet backbone (output stride 8 or 16), ASPP, decoder, one output per lesion."""
import torch.nn.functional as F
from torch import nn

from codebase.backbone import ResNetBackbone
from codebase.layers import ASPP, DeepLabDecoder


class DeepLabV3Plus(nn.Module):
    """images [B, 3, H, W] -> lesion logits [B, num_classes, H, W] (one sigmoid output per lesion).

    ``channels`` is the width of the ASPP output and of the decoder's refinement convs (256 in
    the paper; narrower makes a fast demo model).
    """

    def __init__(self, backbone="resnet50", output_stride=8, pretrained="none", num_classes=5, separable=False,
                 channels=256):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"model.output_stride must be 8 or 16 for DeepLabV3+, got {output_stride}")
        self.backbone = ResNetBackbone(backbone, output_stride=output_stride, pretrained=pretrained)
        self.aspp = ASPP(self.backbone.high_level_channels, channels, output_stride, separable=separable)
        self.decoder = DeepLabDecoder(self.backbone.low_level_channels, num_classes, channels, channels=channels,
                                      separable=separable)

    def forward(self, images):
        low_level, high_level = self.backbone(images)           # [B, Cl, H/4, W/4], [B, Ch, H/os, W/os]
        logits = self.decoder(self.aspp(high_level), low_level)  # [B, classes, H/4, W/4]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

